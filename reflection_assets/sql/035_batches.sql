-- Batch mode (REFLECTION_ORACLE_MODE=batch) and offline batch files. A batch is recorded
-- here, with the request keys it holds, before anything waits on it: a run that is killed
-- re-attaches to the batches it left in flight and never submits again a request that sits
-- in a live batch. `reflection batch list` reads this table.
CREATE TABLE IF NOT EXISTS oracle.batches (
    batch_key          VARCHAR PRIMARY KEY,  -- ours: the provider's `metadata.reflection_batch`
    kind               VARCHAR NOT NULL,     -- api (the OpenAI Batch API) or file (`reflection batch export`)
    role               VARCHAR NOT NULL,     -- oracle or judge: whose settings reach the endpoint
    base_url           VARCHAR,              -- as configured; NULL: the SDK's default
    model              VARCHAR NOT NULL,
    dataset            VARCHAR,
    stage              VARCHAR,
    shard              INTEGER,
    requests           INTEGER NOT NULL,
    attempt            INTEGER NOT NULL,     -- 1 for first submissions; retried lines go in later ones
    retry_of           VARCHAR,              -- the batch whose failed lines (or whole failure) this retries
    whole_retry        BOOLEAN NOT NULL DEFAULT false,  -- a resubmission of a batch that failed as a whole
    input_file_id      VARCHAR,              -- set once uploaded (for files: the path written)
    provider_batch_id  VARCHAR,              -- set once submitted
    status             VARCHAR NOT NULL,     -- preparing, validating, in_progress, finalizing, completed, failed, expired, cancelling, cancelled; exported, imported
    completed          INTEGER NOT NULL DEFAULT 0,
    failed             INTEGER NOT NULL DEFAULT 0,
    output_file_id     VARCHAR,
    error_file_id      VARCHAR,
    message            VARCHAR,              -- the provider's errors, when it failed as a whole
    cancel_requested   BOOLEAN NOT NULL DEFAULT false,  -- by `reflection batch cancel`: not retried
    collected          BOOLEAN NOT NULL DEFAULT false,  -- its replies and failures are stored
    created_at         TIMESTAMP NOT NULL DEFAULT current_timestamp,
    updated_at         TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- The requests of each batch, in their canonical form: what `reflection batch import`
-- checks custom ids against, and how a reply found in a file is stored as its request's.
CREATE TABLE IF NOT EXISTS oracle.batch_requests (
    batch_key     VARCHAR NOT NULL,
    request_key   VARCHAR NOT NULL,      -- the line's custom_id
    attempt       INTEGER NOT NULL,      -- how many batches this request has been put in
    request_json  VARCHAR NOT NULL,
    PRIMARY KEY (batch_key, request_key)
);
