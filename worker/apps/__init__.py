"""An application's life: activation and removal, attribute mappings, importing what it already holds."""
