-- Selective recycling's tables, one shard at a time: engines/selection/store.py.

-- name: variant_counts
-- A shard's rows of selection.variants, counted by variant.
SELECT variant, count(*)
FROM selection.variants
WHERE dataset = ? AND shard = ?
GROUP BY variant;

-- name: cached_scores
-- The cached scores of the keys in the polars frame `wanted` (column score_key).
SELECT c.score_key, status, reason, loss_output_condition, loss_output_alone,
       loss_instruction_condition, loss_instruction_alone, truncated
FROM selection.score_cache AS c
JOIN wanted USING (score_key);

-- name: store_cache
-- Keeps the scores of the polars frame `frame` in the cache, replacing those of the same key.
INSERT OR REPLACE INTO selection.score_cache BY NAME SELECT * FROM frame;

-- name: shard_variants
-- The pairs to score for a shard: every variant of every record, in record order.
SELECT record_id, variant, instruction, input, output
FROM selection.variants
WHERE dataset = ? AND shard = ?
ORDER BY record_id, variant;

-- name: delete_student_scores
-- Clears a shard's rows of selection.student_scores.
DELETE FROM selection.student_scores WHERE dataset = ? AND shard = ?;

-- name: insert_student_scores
-- A shard's student scores, from the polars frame `frame`.
INSERT INTO selection.student_scores BY NAME SELECT * FROM frame;

-- name: shard_scores
-- A shard's scores, for the official rule.
SELECT record_id, variant, ifd, r_ifd
FROM selection.student_scores
WHERE dataset = ? AND shard = ?;

-- name: shard_record_count
-- How many raw records a shard has.
SELECT count(*) FROM raw.records WHERE dataset = ? AND shard = ?;

-- name: delete_decisions
-- Clears a shard's rows of selection.decisions.
DELETE FROM selection.decisions WHERE dataset = ? AND shard = ?;

-- name: insert_decisions
-- A shard's decisions, from the polars frame `decision_frame`.
INSERT INTO selection.decisions BY NAME SELECT * FROM decision_frame;

-- name: delete_selective
-- Clears a shard's rows of selection.selective.
DELETE FROM selection.selective WHERE dataset = ? AND shard = ?;

-- name: insert_selective
-- A shard's kept records: the variant each decision kept, unless top_k cut it.
INSERT INTO selection.selective BY NAME
SELECT v.dataset, v.shard, v.record_id, d.kept AS kind, v.instruction, v.input, v.output,
       CASE d.kept WHEN 'both' THEN 'both' ELSE 'response_reflected' END AS provenance,
       r.source_file, r.source_row, v.instruction_request_key, v.response_request_key,
       v.fingerprint, s.ifd, s.r_ifd, d.reason
FROM selection.decisions AS d
JOIN selection.variants AS v
  ON v.dataset = d.dataset AND v.record_id = d.record_id AND v.variant = d.kept
JOIN selection.student_scores AS s
  ON s.dataset = d.dataset AND s.record_id = d.record_id AND s.variant = d.kept
JOIN raw.records AS r
  ON r.dataset = d.dataset AND r.record_id = d.record_id
WHERE d.dataset = ? AND d.shard = ? AND NOT d.cut_by_top_k;

-- name: selective_preview
-- The first five kept records of a shard.
SELECT record_id, kind, round(ifd, 4) AS ifd, round(r_ifd, 4) AS r_ifd, instruction, output
FROM selection.selective
WHERE dataset = ? AND shard = ?
ORDER BY record_id
LIMIT 5;

-- name: selective_count
-- How many records a shard kept.
SELECT count(*) FROM selection.selective WHERE dataset = ? AND shard = ?;

-- name: score_distribution
-- variant, ifd, r_ifd of a shard's variants scored ok: for the histogram.
SELECT variant, ifd, r_ifd
FROM selection.student_scores
WHERE dataset = ? AND shard = ? AND status = 'ok';
