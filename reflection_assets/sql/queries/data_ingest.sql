-- Ingesting a dataset's source into raw.source_rows, and a shard's summary: engines/data/ingest.py.

-- name: staged_rows_read
-- How many source rows a staged version of a dataset read (no row: not staged yet).
SELECT rows_read FROM raw.source_versions WHERE dataset = ? AND version = ?;

-- name: version_staged
-- A row when a version of a dataset is staged already (another process may have staged it).
SELECT 1 FROM raw.source_versions WHERE dataset = ? AND version = ?;

-- name: insert_source_rows
-- Every classified source row of a version, from the polars frame `frame`.
INSERT INTO raw.source_rows
    (dataset, version, shard, source_row, status, detail, record_id,
     instruction, input, output)
SELECT dataset, version, shard, source_row, status, detail, record_id,
       instruction, input, output
FROM frame;

-- name: insert_source_version
-- Records a staged version: its source, format, shard count and how many rows it read.
INSERT INTO raw.source_versions
    (dataset, version, source, source_path, source_sha256, format,
     shard_count, rows_read)
VALUES (?, ?, ?, ?, ?, ?, ?, ?);

-- name: point_shard
-- Points a shard at a staged version (replacing the version it pointed at).
INSERT INTO raw.shard_versions (dataset, shard, version) VALUES (?, ?, ?)
ON CONFLICT (dataset, shard) DO UPDATE SET version = excluded.version,
    materialized_at = now();

-- name: shard_fingerprint
-- The md5 of a shard's sorted record ids: changes exactly when its set of records changes.
SELECT md5(coalesce(string_agg(record_id, ',' ORDER BY record_id), ''))
FROM raw.records
WHERE dataset = ? AND shard = ?;

-- name: shard_record_count
-- How many raw records a shard has.
SELECT count(*) FROM raw.records WHERE dataset = ? AND shard = ?;

-- name: shard_reject_counts
-- A shard's rejected rows, counted by reason.
SELECT reason, count(*)
FROM raw.rejects
WHERE dataset = ? AND shard = ?
GROUP BY reason
ORDER BY reason;

-- name: shard_length_stats
-- Mean, median and longest length of instruction, input and output over a shard's records.
SELECT avg(length(instruction)), median(length(instruction)), max(length(instruction)),
       avg(length(input)), median(length(input)), max(length(input)),
       avg(length(output)), median(length(output)), max(length(output))
FROM raw.records
WHERE dataset = ? AND shard = ?;

-- name: shard_preview
-- The first records of a shard in source order; the last parameter is how many.
SELECT record_id, source_row, instruction, input, output
FROM raw.records
WHERE dataset = ? AND shard = ?
ORDER BY source_row
LIMIT ?;

-- name: shard_reject_preview
-- The first rejected rows of a shard in source order; the last parameter is how many.
SELECT source_row, reason, detail
FROM raw.rejects
WHERE dataset = ? AND shard = ?
ORDER BY source_row
LIMIT ?;
