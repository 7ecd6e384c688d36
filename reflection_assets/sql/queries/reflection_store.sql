-- The reflection tables, read and written one shard at a time: engines/reflection/store.py.

-- name: raw_pairs
-- A shard's raw pairs, in record order.
SELECT record_id, instruction, input, output
FROM raw.records
WHERE dataset = ? AND shard = ?
ORDER BY record_id;

-- name: missing_instruction_reflections
-- How many of a shard's raw records have no row in reflect.instructions.
SELECT count(*)
FROM raw.records AS r
LEFT JOIN reflect.instructions AS i USING (dataset, record_id)
WHERE r.dataset = ? AND r.shard = ? AND i.record_id IS NULL;

-- name: instruction_reflected_pairs
-- The pairs phase 1 left for a shard (the original where it kept it), and whether it replaced each.
SELECT r.record_id,
       coalesce(i.new_instruction, r.instruction),
       CASE WHEN i.replaced THEN '' ELSE r.input END,
       coalesce(i.new_output, r.output),
       i.replaced
FROM raw.records AS r
JOIN reflect.instructions AS i USING (dataset, record_id)
WHERE r.dataset = ? AND r.shard = ?
ORDER BY r.record_id;

-- name: delete_shard_rows
-- Clears a shard's rows of {table} (reflect.instructions or reflect.responses).
DELETE FROM {table} WHERE dataset = ? AND shard = ?;

-- name: insert_shard_rows
-- A shard's rows of {table} from the polars frame `frame`, whose {columns} it copies.
INSERT INTO {table} (dataset, shard, fingerprint, prompt_version, {columns})
SELECT ?, ?, ?, ?, {columns} FROM frame;

-- name: recycle_available
-- How many of a shard's records the recycle view {view} (the mode's) has.
SELECT count(*) FROM {view} WHERE dataset = ? AND shard = ?;

-- name: shard_record_count
-- How many raw records a shard has.
SELECT count(*) FROM raw.records WHERE dataset = ? AND shard = ?;

-- name: delete_recycled
-- Clears a shard's rows of reflect.recycled.
DELETE FROM reflect.recycled WHERE dataset = ? AND shard = ?;

-- name: insert_recycled
-- A shard's rows of reflect.recycled, from the recycle view {view} of the mode.
INSERT INTO reflect.recycled
    (dataset, shard, record_id, mode, instruction, input, output, provenance,
     source_file, source_row, instruction_request_key, response_request_key,
     instruction_outcome, response_outcome, fingerprint)
SELECT dataset, shard, record_id, mode, instruction, input, output, provenance,
       source_file, source_row, instruction_request_key, response_request_key,
       instruction_outcome, response_outcome, fingerprint
FROM {view}
WHERE dataset = ? AND shard = ?;

-- name: shard_health
-- What a reflection stage's checks look at for one shard, from its health view {view}.
SELECT rows, ok, empty_replacements, mixed_pairs FROM {view} WHERE dataset = ? AND shard = ?;

-- name: recycled_provenance
-- A shard's recycled rows, counted by provenance.
SELECT provenance, count(*)
FROM reflect.recycled
WHERE dataset = ? AND shard = ?
GROUP BY 1;

-- name: recycled_preview
-- The first recycled rows of a shard, reflected ones first; the last parameter is how many.
SELECT record_id, provenance, instruction, input, output
FROM reflect.recycled
WHERE dataset = ? AND shard = ?
ORDER BY provenance DESC, record_id
LIMIT ?;

-- name: recycled_mean_chars
-- The mean length of a shard's recycled instructions and outputs.
SELECT round(avg(length(instruction)), 1), round(avg(length(output)), 1)
FROM reflect.recycled
WHERE dataset = ? AND shard = ?;

-- name: served_by
-- The replies behind a shard's rows of a stage (its calls' stage LIKE the last parameter), by
-- what served them: the completion's model, with its system_fingerprint when it had one.
SELECT coalesce(o.served_model, 'not recorded') || coalesce(' (' || o.system_fingerprint || ')', ''),
       count(DISTINCT o.request_key)
FROM lineage.oracle_calls AS o
JOIN raw.records AS r USING (dataset, record_id)
WHERE o.dataset = ? AND r.shard = ? AND o.stage LIKE ? AND o.model IS NOT NULL
GROUP BY 1
ORDER BY 2 DESC, 1;

-- name: judge_served_by
-- The judge's replies behind one benchmark run, by what served them (as served_by labels them).
SELECT coalesce(o.served_model, 'not recorded') || coalesce(' (' || o.system_fingerprint || ')', ''),
       count(DISTINCT o.request_key)
FROM bench.judge_calls AS j
JOIN oracle.replies AS o USING (request_key)
WHERE j.run_id = ?
GROUP BY 1
ORDER BY 2 DESC, 1;
