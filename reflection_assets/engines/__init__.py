"""What touches the world (files, the store, the oracle, models), one package per domain; each imports `method/` and the domains it builds on, never `assets/`."""
