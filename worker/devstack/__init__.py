"""The local stack of ``make run``: an embedded Redis, a local SCIM app, workers and the receiver. Production installs do not need it."""
