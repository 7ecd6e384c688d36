-- Datasets the user registered with `reflection datasets add NAME SOURCE`.
-- Each name is also a partition of the `dataset` dimension in the Dagster instance.
CREATE TABLE IF NOT EXISTS registry.datasets (
    name        VARCHAR PRIMARY KEY,
    source      VARCHAR NOT NULL,   -- a path, or bundled:NAME for files shipped in the package
    format      VARCHAR,            -- json, jsonl, csv, parquet, hf; NULL = detect from the path
    field_map   VARCHAR NOT NULL DEFAULT '{}',  -- JSON {"instruction": "column", ...}
    added_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    updated_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);
-- Only the first N rows of the source (`datasets add --limit N`); NULL = all of them.
ALTER TABLE registry.datasets ADD COLUMN IF NOT EXISTS row_limit INTEGER;

-- Evaluation test sets registered with `reflection testsets add NAME FILE`; the bundled
-- prompts are always available as `bundled` and need no row here.
CREATE TABLE IF NOT EXISTS registry.testsets (
    name        VARCHAR PRIMARY KEY,
    source      VARCHAR NOT NULL,   -- a path, or bundled:NAME
    format      VARCHAR,            -- vicuna, koala, wizardlm, self-instruct, lima, alpaca-eval; NULL = detect
    added_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    updated_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Which schema this store has: the sha256 of the package's sql/ files last applied to it. A
-- process applies them (then checkpoints, so the WAL never holds DDL) only when it differs.
CREATE TABLE IF NOT EXISTS registry.schema_applied (
    sql_sha256  VARCHAR NOT NULL,
    applied_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);
