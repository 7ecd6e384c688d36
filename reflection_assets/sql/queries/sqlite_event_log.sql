-- Dagster's SQLite event log, not the store: reflection_assets/dagster_private.py. Files named
-- sqlite_* hold SQLite statements (tests/unit/test_queries.py runs them in SQLite).

-- name: passive_checkpoint
-- What the transaction wrote to the WAL reaches the run's .db file, which the UI watches;
-- never waits for a reader or a writer.
PRAGMA wal_checkpoint(PASSIVE);

-- name: truncate_checkpoint
-- A new run's file, just set up by Dagster, all in the .db file (the WAL emptied), so that its
-- bytes are the template of the process's next runs' files: (busy, WAL frames, checkpointed).
PRAGMA wal_checkpoint(TRUNCATE);
