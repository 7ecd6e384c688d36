-- Connections, schema set-up and transactions: engines/store/storage.py.

-- name: schema_digest
-- The digest of the sql/*.sql files last applied to this store.
SELECT max(sql_sha256) FROM registry.schema_applied;

-- name: forget_schema_digest
DELETE FROM registry.schema_applied;

-- name: record_schema_digest
INSERT INTO registry.schema_applied (sql_sha256) VALUES (?);

-- name: checkpoint
-- Writes the WAL into the file, so that the next open replays nothing.
CHECKPOINT;

-- name: no_checkpoint_on_close
-- Closing does not checkpoint by itself (connect says when it does).
PRAGMA disable_checkpoint_on_shutdown;

-- name: begin
BEGIN TRANSACTION;

-- name: commit
COMMIT;

-- name: rollback
ROLLBACK;
