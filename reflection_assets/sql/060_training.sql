-- Fine-tuned adapters. An adapter is identified by what made it: dataset, variant, the
-- fingerprint of its training rows and its training config. A row is written only after
-- the adapter folder is complete, so the registry never points at half a model.
CREATE TABLE IF NOT EXISTS training.adapters (
    adapter_id        VARCHAR PRIMARY KEY,   -- sha256(variant, data fingerprint, config)[:16]
    dataset           VARCHAR NOT NULL,
    variant           VARCHAR NOT NULL,      -- baseline (original data) or recycled
    path              VARCHAR NOT NULL,      -- PeftModel.from_pretrained (lora, qlora), from_pretrained (full)
    base_model        VARCHAR NOT NULL,
    data_fingerprint  VARCHAR NOT NULL,      -- sha256 of the training rows
    records           INTEGER NOT NULL,
    config_json       VARCHAR NOT NULL,
    steps             INTEGER NOT NULL,
    tokens            BIGINT NOT NULL,
    train_loss        DOUBLE NOT NULL,       -- mean over the last 10% of steps
    eval_loss         DOUBLE,                -- held-out slice, when there was one
    truncated         INTEGER NOT NULL,      -- examples cut to max_length
    precision         VARCHAR NOT NULL,
    wall_s            DOUBLE NOT NULL,
    created_at        TIMESTAMP NOT NULL DEFAULT current_timestamp
);
-- Added with the trainer in its own process (NULL for adapters trained before).
ALTER TABLE training.adapters ADD COLUMN IF NOT EXISTS method VARCHAR;             -- lora, qlora or full (path: a model folder)
ALTER TABLE training.adapters ADD COLUMN IF NOT EXISTS world_size INTEGER;         -- training processes
ALTER TABLE training.adapters ADD COLUMN IF NOT EXISTS resumed_from_step INTEGER;  -- 0: trained in one go
ALTER TABLE training.adapters ADD COLUMN IF NOT EXISTS tokens_per_s DOUBLE;        -- training steps only

-- Which records trained which adapter: lineage from a record to the models it shaped.
CREATE TABLE IF NOT EXISTS training.adapter_records (
    adapter_id  VARCHAR NOT NULL,
    record_id   VARCHAR NOT NULL
);

-- The adapter each dataset's variant last materialized: what benchmark_scores evaluates.
CREATE TABLE IF NOT EXISTS training.current_adapters (
    dataset     VARCHAR NOT NULL,
    variant     VARCHAR NOT NULL,
    adapter_id  VARCHAR NOT NULL,
    updated_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, variant)
);
