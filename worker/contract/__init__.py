"""The event contract (what producers send) and the plain data the engine's parts exchange."""
