"""The oracle client: backends and what each can do, the reply cache, limits, batch mode, the probe of what serves a model, and what recycling will cost."""
