-- Which shards each record-level stage has written, and how many rows it wrote. A small
-- dataset leaves shards empty: a stage that ran on an empty shard is done (0 rows), and
-- this tells it apart from a shard the stage never ran on. Written in the same transaction
-- as the stage's rows. (raw_dataset's own record is raw.shard_versions.)
CREATE TABLE IF NOT EXISTS registry.stage_shards (
    stage       VARCHAR NOT NULL,   -- the asset: reflected_instructions, student_scores...
    dataset     VARCHAR NOT NULL,
    shard       INTEGER NOT NULL,
    rows        BIGINT NOT NULL,
    written_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (stage, dataset, shard)
);

-- Every stage's written shards, raw_dataset's included (from raw.shard_versions).
CREATE OR REPLACE VIEW registry.written_shards AS
SELECT stage, dataset, shard, rows FROM registry.stage_shards
UNION ALL
SELECT 'raw_dataset', s.dataset, s.shard,
       (SELECT count(*) FROM raw.source_rows AS r
        WHERE r.dataset = s.dataset AND r.version = s.version AND r.shard = s.shard AND r.status = 'ok')
FROM raw.shard_versions AS s;
