-- The batches batch mode made and the files `reflection batch export` wrote: engines/oracle/batch_store.py.

-- name: insert_batch
-- A batch's row (run through the ledger, which adds RETURNING *).
INSERT INTO oracle.batches (batch_key, kind, role, base_url, model, dataset, stage, shard, requests,
                            attempt, retry_of, whole_retry, input_file_id, status)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_batch_requests
-- A batch's requests, from the polars frame `rows`.
INSERT OR IGNORE INTO oracle.batch_requests SELECT * FROM rows;

-- name: update_batch
-- {assignments}: `name = ?` for each field changed (run through the ledger).
UPDATE oracle.batches SET {assignments}, updated_at = current_timestamp WHERE batch_key = ?;

-- name: delete_batch_requests
DELETE FROM oracle.batch_requests WHERE batch_key = ?;

-- name: delete_batch
DELETE FROM oracle.batches WHERE batch_key = ?;

-- name: batch
-- {columns}: BatchRecord's fields, as each of the selects below.
SELECT {columns} FROM oracle.batches WHERE batch_key = ? ORDER BY created_at, batch_key;

-- name: uncollected_batches
-- API batches at an endpoint (role, model, base URL) whose replies are not stored yet.
SELECT {columns} FROM oracle.batches
WHERE kind = 'api' AND NOT collected AND role = ? AND model = ? AND base_url IS NOT DISTINCT FROM ?
ORDER BY created_at, batch_key;

-- name: batches_of_dataset
SELECT {columns} FROM oracle.batches WHERE dataset = ? ORDER BY created_at, batch_key;

-- name: all_batches
SELECT {columns} FROM oracle.batches ORDER BY created_at, batch_key;

-- name: batch_request_keys
SELECT request_key FROM oracle.batch_requests WHERE batch_key = ? ORDER BY request_key;

-- name: known_requests
-- The recorded request of each key in the polars frame `wanted`.
SELECT request_key, any_value(request_json)
FROM oracle.batch_requests
JOIN wanted USING (request_key)
GROUP BY 1;

-- name: mark_imported
-- Exported files whose every request now has a reply (run through the ledger).
UPDATE oracle.batches AS b SET status = 'imported', collected = true, updated_at = current_timestamp
WHERE b.kind = 'file' AND b.status = 'exported' AND NOT EXISTS (
    SELECT 1 FROM oracle.batch_requests AS q LEFT JOIN oracle.replies AS o USING (request_key)
    WHERE q.batch_key = b.batch_key AND o.request_key IS NULL);
