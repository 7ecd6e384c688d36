-- The reply cache and what the oracle's replies cost: engines/oracle/cache.py.

-- name: spend
-- Cached replies, tokens and cost per fingerprint.
SELECT fingerprint, model, replies, prompt_tokens + completion_tokens, cost_usd
FROM oracle.spend
ORDER BY model, fingerprint;

-- name: record_baseline
-- The first snapshot seen behind (backend, model), kept when there is one already (run
-- through the ledger, which adds RETURNING *).
INSERT OR IGNORE INTO oracle.served_baselines (backend, model, identity_json) VALUES (?, ?, ?);

-- name: baseline
SELECT identity_json FROM oracle.served_baselines WHERE backend = ? AND model = ?;

-- name: insert_new_replies
-- The rows of the polars frame `replies` not stored yet ({columns}: REPLY_SCHEMA's); returns their keys.
INSERT OR IGNORE INTO oracle.replies ({columns}) SELECT {columns} FROM replies RETURNING request_key;

-- name: lookup
-- The cached replies of the request keys in the polars frame `wanted`.
SELECT r.request_key, r.fingerprint, r.reply_text, r.finish_reason,
       r.prompt_tokens, r.completion_tokens, r.cost_usd, r.latency_s, r.attempts,
       r.served_model, r.system_fingerprint, r.served_identity
FROM oracle.replies AS r
JOIN wanted USING (request_key);

-- name: insert_replies
-- The polars frame `replies` ({columns}: REPLY_SCHEMA's), a reply already stored kept.
INSERT OR IGNORE INTO oracle.replies ({columns}) SELECT {columns} FROM replies;

-- name: insert_failures
-- The polars frame `failures` ({columns}: FAILURE_SCHEMA's).
INSERT INTO oracle.failures ({columns}) SELECT {columns} FROM failures;
