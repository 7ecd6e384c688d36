-- A dataset's rows and preference pairs, for export: engines/data/export.py.

-- name: inspection_rows
-- A stage's result per record and variant, from its view {view}: the {columns} inspection shows, and shard.
SELECT {columns}, shard
FROM {view}
WHERE dataset = ?
ORDER BY source_row, record_id, variant;

-- name: raw_rows
-- The raw records as a training set, all of provenance 'original'.
SELECT record_id, instruction, input, output, 'original' AS provenance, shard
FROM raw.records
WHERE dataset = ?
ORDER BY source_row, record_id;

-- name: stage_rows
-- A training set from {table} (reflect.recycled or selection.selective), with each row's provenance.
SELECT record_id, instruction, input, output, provenance, shard
FROM {table}
WHERE dataset = ?
ORDER BY source_row, record_id;

-- name: recycled_pairs
-- Preference pairs: every record whose answer phase 2 rewrote while its instruction stayed the
-- original's (the pair reflected was the original: variant `original`, or the chain's where
-- phase 1 kept the pair), once: the oracle's answer is chosen, the original's rejected.
SELECT record_id, variant, instruction, input, chosen, rejected, shard FROM (
    SELECT r.record_id, r.variant, r.instruction, r.input, r.better_output AS chosen, o.output AS rejected,
           r.shard, o.source_row,
           row_number() OVER (PARTITION BY r.record_id ORDER BY r.variant = 'original' DESC, r.variant) AS nth
    FROM reflect.responses AS r
    JOIN raw.records AS o ON o.dataset = r.dataset AND o.record_id = r.record_id
    WHERE r.dataset = ? AND r.base = 'original' AND r.replaced AND r.better_output <> o.output
)
WHERE nth = 1
ORDER BY source_row, record_id;

-- name: selective_pairs
-- The preference pairs of recycled_pairs, only for the records the student kept in that form
-- (selection.selective, kind `response`).
SELECT record_id, variant, instruction, input, chosen, rejected, shard FROM (
    SELECT r.record_id, r.variant, r.instruction, r.input, r.better_output AS chosen, o.output AS rejected,
           r.shard, o.source_row,
           row_number() OVER (PARTITION BY r.record_id ORDER BY r.variant = 'original' DESC, r.variant) AS nth
    FROM reflect.responses AS r
    JOIN raw.records AS o ON o.dataset = r.dataset AND o.record_id = r.record_id
    JOIN selection.selective AS s ON s.dataset = r.dataset AND s.record_id = r.record_id AND s.kind = 'response'
    WHERE r.dataset = ? AND r.base = 'original' AND r.replaced AND r.better_output <> o.output
)
WHERE nth = 1
ORDER BY source_row, record_id;
