-- The dataset registry, registry.datasets: engines/data/datasets.py.

-- name: upsert_dataset
-- Registers a dataset or points it at a new source (run through the ledger, which adds RETURNING *).
INSERT INTO registry.datasets (name, source, format, field_map, row_limit)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET source = excluded.source,
    format = excluded.format, field_map = excluded.field_map, row_limit = excluded.row_limit,
    updated_at = now();

-- name: find_dataset
-- One registered dataset, by name.
SELECT name, source, format, field_map, row_limit FROM registry.datasets WHERE name = ?;

-- name: list_datasets
-- Every registered dataset, by name.
SELECT name, source, format, field_map, row_limit FROM registry.datasets ORDER BY name;
