-- The test set registry, registry.testsets: engines/benchmark/testsets.py.

-- name: upsert_testset
-- Registers a test set or points it at a new source (run through the ledger, which adds RETURNING *).
INSERT INTO registry.testsets (name, source, format) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET source = excluded.source, format = excluded.format,
    updated_at = now();

-- name: find_testset
-- One registered test set, by name.
SELECT name, source, format FROM registry.testsets WHERE name = ?;

-- name: list_testsets
-- Every registered test set, by name.
SELECT name, source, format FROM registry.testsets ORDER BY name;
