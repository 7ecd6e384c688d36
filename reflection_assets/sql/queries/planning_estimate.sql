-- What `reflection estimate` reads of the store: engines/planning/estimate.py.

-- name: recent_replies
-- When this oracle's latest replies (of this prompt version) arrived, and how long each took.
SELECT epoch(created_at), latency_s
FROM oracle.replies
WHERE backend = ? AND model = ? AND prompt_version = ? AND latency_s > 0
ORDER BY created_at DESC
LIMIT 5000;

-- name: dataset_pairs
SELECT record_id, instruction, input, output FROM raw.records WHERE dataset = ? ORDER BY shard, record_id;

-- name: current_adapters
SELECT variant, adapter_id FROM training.current_adapters WHERE dataset = ?;

-- name: stored_answers
-- An adapter's latest answer to each prompt.
SELECT prompt_hash, arg_max(answer, created_at) FROM bench.answers WHERE model_key = ? GROUP BY ALL;

-- name: mean_answer_chars
SELECT avg(length(answer)) FROM bench.answers;

-- name: prior_reflected_instructions
-- A record of the stage this oracle answered: its first call's output, follow-ups asked,
-- their cached output and count.
SELECT f.completion_tokens,
       (t.answer_key IS NOT NULL)::INT + (t.repair_key IS NOT NULL)::INT,
       coalesce(a.completion_tokens, 0) + coalesce(r.completion_tokens, 0),
       (a.request_key IS NOT NULL)::INT + (r.request_key IS NOT NULL)::INT
FROM (SELECT DISTINCT request_key, answer_key, repair_key FROM reflect.instructions) AS t
JOIN oracle.replies AS f ON f.request_key = t.request_key
LEFT JOIN oracle.replies AS a ON a.request_key = t.answer_key
LEFT JOIN oracle.replies AS r ON r.request_key = t.repair_key
WHERE f.backend = ? AND f.model = ? AND f.prompt_version = ?
LIMIT 20000;

-- name: prior_reflected_responses
-- As prior_reflected_instructions, for phase 2 (its only follow-up is the repair).
SELECT f.completion_tokens, (t.repair_key IS NOT NULL)::INT, coalesce(r.completion_tokens, 0),
       (r.request_key IS NOT NULL)::INT
FROM (SELECT DISTINCT request_key, repair_key FROM reflect.responses) AS t
JOIN oracle.replies AS f ON f.request_key = t.request_key
LEFT JOIN oracle.replies AS r ON r.request_key = t.repair_key
WHERE f.backend = ? AND f.model = ? AND f.prompt_version = ?
LIMIT 20000;

-- name: prior_judgments
-- The judge's: one call an order, no follow-up.
SELECT completion_tokens, 0, 0, 0
FROM oracle.replies
WHERE backend = ? AND model = ? AND prompt_version = ?
LIMIT 20000;
