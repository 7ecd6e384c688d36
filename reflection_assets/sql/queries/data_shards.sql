-- Which shards a stage has written, registry.stage_shards: engines/data/shards.py.

-- name: mark_written
-- Records that a stage wrote a number of rows for a shard (replacing an earlier count).
INSERT INTO registry.stage_shards (stage, dataset, shard, rows) VALUES (?, ?, ?, ?)
ON CONFLICT (stage, dataset, shard) DO UPDATE SET rows = excluded.rows, written_at = now();

-- name: written_shards
-- Every shard a stage has written for a dataset, with its row count.
SELECT shard, rows FROM registry.written_shards WHERE stage = ? AND dataset = ?;
