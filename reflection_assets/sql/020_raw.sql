-- Raw stage. A source is parsed once per version (its bytes, the parsing settings and the
-- shard count): every row lands in raw.source_rows with its status. Materializing a shard
-- of raw_dataset points raw.shard_versions at a version; earlier versions stay, so
-- lineage of rows built from them still resolves.
CREATE TABLE IF NOT EXISTS raw.source_versions (
    dataset        VARCHAR NOT NULL,
    version        VARCHAR NOT NULL,   -- sha256 of source bytes + parsing settings
    source         VARCHAR NOT NULL,
    source_path    VARCHAR NOT NULL,
    source_sha256  VARCHAR NOT NULL,
    format         VARCHAR NOT NULL,
    shard_count    INTEGER NOT NULL,
    rows_read      BIGINT NOT NULL,
    staged_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, version)
);

CREATE TABLE IF NOT EXISTS raw.source_rows (
    dataset     VARCHAR NOT NULL,
    version     VARCHAR NOT NULL,
    shard       INTEGER NOT NULL,
    source_row  BIGINT NOT NULL,      -- 1-based record position; the line number for JSON Lines
    status      VARCHAR NOT NULL,     -- ok, duplicate, or a reject reason
    detail      VARCHAR,
    record_id   VARCHAR,              -- NULL for rows that could not be mapped to a record
    instruction VARCHAR,
    input       VARCHAR,
    output      VARCHAR
);

CREATE TABLE IF NOT EXISTS raw.shard_versions (
    dataset          VARCHAR NOT NULL,
    shard            INTEGER NOT NULL,
    version          VARCHAR NOT NULL,
    materialized_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, shard)
);

-- The records each shard currently holds.
CREATE OR REPLACE VIEW raw.records AS
SELECT r.dataset, r.shard, r.record_id, r.instruction, r.input, r.output,
       v.source_path AS source_file, r.source_row, r.version
FROM raw.shard_versions AS s
JOIN raw.source_rows AS r ON r.dataset = s.dataset AND r.version = s.version AND r.shard = s.shard
JOIN raw.source_versions AS v ON v.dataset = r.dataset AND v.version = r.version
WHERE r.status = 'ok';

-- Rows each shard set aside, with the reason: file, row and what was wrong.
CREATE OR REPLACE VIEW raw.rejects AS
SELECT r.dataset, r.shard, v.source_path AS source_file, r.source_row, r.status AS reason,
       r.detail, r.record_id, r.version
FROM raw.shard_versions AS s
JOIN raw.source_rows AS r ON r.dataset = s.dataset AND r.version = s.version AND r.shard = s.shard
JOIN raw.source_versions AS v ON v.dataset = r.dataset AND v.version = r.version
WHERE r.status <> 'ok';
