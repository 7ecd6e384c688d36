-- Dagster's SQLite event log, not the store: reflection_assets/dagster_private.py. Files named
-- sqlite_* hold SQLite statements (tests/unit/test_queries.py runs them in SQLite).

-- name: passive_checkpoint
-- What the transaction wrote to the WAL reaches the run's .db file, which the UI watches;
-- never waits for a reader or a writer.
PRAGMA wal_checkpoint(PASSIVE);
