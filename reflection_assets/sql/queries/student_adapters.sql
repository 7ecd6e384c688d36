-- Adapters, their training rows and the current adapter of each variant: engines/student/adapters.py.

-- name: training_rows
-- A dataset's rows in {source}, the variant's table (VARIANT_SOURCES).
SELECT record_id, instruction, input, output FROM {source}
WHERE dataset = ? ORDER BY record_id;

-- name: count_training_rows
-- How many of a dataset's rows {source}, the variant's table, holds.
SELECT count(*) FROM {source} WHERE dataset = ?;

-- name: set_current_adapter
-- The adapter the variant's asset last materialized: what benchmark_scores evaluates (run
-- through the ledger, which adds RETURNING *).
INSERT INTO training.current_adapters (dataset, variant, adapter_id) VALUES (?, ?, ?)
ON CONFLICT (dataset, variant) DO UPDATE SET adapter_id = excluded.adapter_id, updated_at = now();

-- name: clear_current_adapter
DELETE FROM training.current_adapters WHERE dataset = ? AND variant = ?;

-- name: find_adapter
SELECT * FROM training.adapters WHERE adapter_id = ?;

-- name: delete_adapter
DELETE FROM training.adapters WHERE adapter_id = ?;

-- name: delete_adapter_records
DELETE FROM training.adapter_records WHERE adapter_id = ?;

-- name: insert_adapter
-- An adapter's registry row: {columns} are the registry's keys, {params} one `?` for each
-- (run through the ledger, which adds RETURNING *).
INSERT INTO training.adapters ({columns}) VALUES ({params});

-- name: insert_adapter_records
-- The records an adapter trained on, from the polars frame `record_ids`.
INSERT INTO training.adapter_records SELECT adapter_id, record_id FROM record_ids;

-- name: selection_scorers
-- The students whose scores selected a dataset's records for the selective adapter.
SELECT DISTINCT student FROM selection.student_scores WHERE dataset = ? ORDER BY 1;

-- name: list_adapters
-- The registered adapters, flagged current or not: of one dataset (or of all when the first
-- two parameters are NULL), the current ones only unless the third is true.
SELECT a.*, c.variant IS NOT NULL AS current
FROM training.adapters AS a
LEFT JOIN training.current_adapters AS c ON c.adapter_id = a.adapter_id
WHERE (? IS NULL OR a.dataset = ?) AND (? OR c.variant IS NOT NULL)
ORDER BY a.dataset, a.variant, a.created_at;
