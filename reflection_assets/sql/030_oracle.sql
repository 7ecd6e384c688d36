-- The oracle's request cache and call log. A reply is stored, keyed by the sha256 of its
-- canonical request, before anyone parses it: a request found here is never sent again.

CREATE TABLE IF NOT EXISTS oracle.replies (
    request_key        VARCHAR PRIMARY KEY,
    fingerprint        VARCHAR NOT NULL,   -- backend, model, sampling, prompt version
    backend            VARCHAR NOT NULL,
    model              VARCHAR NOT NULL,
    prompt_version     VARCHAR NOT NULL,
    request_json       VARCHAR NOT NULL,   -- the canonical request (no API key, no URL)
    reply_text         VARCHAR NOT NULL,
    finish_reason      VARCHAR,            -- 'length' means truncated by max_tokens
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cost_usd           DOUBLE NOT NULL,
    latency_s          DOUBLE NOT NULL,
    attempts           INTEGER NOT NULL,
    created_at         TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- What served each reply (databases made before the probe existed get NULLs): the probed
-- identity it was requested under, and the completion's own `model` and system_fingerprint.
ALTER TABLE oracle.replies ADD COLUMN IF NOT EXISTS served_identity VARCHAR;
ALTER TABLE oracle.replies ADD COLUMN IF NOT EXISTS served_model VARCHAR;
ALTER TABLE oracle.replies ADD COLUMN IF NOT EXISTS system_fingerprint VARCHAR;

-- The first snapshot this database saw behind each model name. Requests sent under it keep
-- the keys they had before the probe existed (so upgrading buys nothing again); requests
-- sent under any other snapshot carry its identity in their key, so a reply of one
-- snapshot is never taken for another's, and switching back costs nothing.
CREATE TABLE IF NOT EXISTS oracle.served_baselines (
    backend        VARCHAR NOT NULL,
    model          VARCHAR NOT NULL,
    identity_json  VARCHAR NOT NULL,   -- ServedIdentity.as_metadata()
    first_seen     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (backend, model)
);

-- Requests that got no reply: permanent errors, retries exhausted, stopped by the budget.
-- They are asked again on a later run; this log says what happened each time.
CREATE TABLE IF NOT EXISTS oracle.failures (
    request_key  VARCHAR NOT NULL,
    fingerprint  VARCHAR NOT NULL,
    backend      VARCHAR NOT NULL,
    model        VARCHAR NOT NULL,
    error_kind   VARCHAR NOT NULL,   -- permanent, transient, budget
    status       INTEGER,            -- HTTP status when there was one
    message      VARCHAR NOT NULL,
    attempts     INTEGER NOT NULL,
    created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Spend per oracle fingerprint, for status and budgets.
CREATE OR REPLACE VIEW oracle.spend AS
SELECT fingerprint, backend, model, count(*) AS replies,
       sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
       sum(cost_usd) AS cost_usd, count(*) FILTER (WHERE finish_reason = 'length') AS truncated
FROM oracle.replies
GROUP BY ALL;
