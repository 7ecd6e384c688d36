"""The DuckDB store: its lock, the ledger of paid work, and recovery."""
