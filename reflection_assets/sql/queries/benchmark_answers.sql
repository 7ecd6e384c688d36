-- The evaluated models, their stored answers and held-out losses: engines/benchmark/answers.py.

-- name: current_adapters
-- A dataset's current adapter of each variant, with what loading it needs.
SELECT c.variant, a.adapter_id, a.base_model, a.config_json, a.path
FROM training.current_adapters c JOIN training.adapters a USING (adapter_id)
WHERE c.dataset = ? ORDER BY c.variant;

-- name: stored_answers
-- A model's answers made with one generation key, by prompt hash.
SELECT prompt_hash, answer FROM bench.answers WHERE model_key = ? AND generation_key = ?;

-- name: insert_answers
-- A batch of answers, from the polars frame `frame`.
INSERT OR REPLACE INTO bench.answers (model_key, prompt_hash, generation_key, prompt, answer,
    finish_reason, new_tokens, backend)
SELECT * FROM frame;

-- name: untrained_rows
-- A dataset's rows in {table} that none of the adapters trained on; {params} is one `?` per
-- adapter id.
SELECT record_id, instruction, input, output FROM {table}
WHERE dataset = ?
    AND record_id NOT IN (SELECT record_id FROM training.adapter_records WHERE adapter_id IN ({params}))
ORDER BY record_id;

-- name: stored_heldout_loss
-- A held-out loss measured before, by its key.
SELECT examples, loss FROM bench.heldout_loss WHERE loss_key = ? LIMIT 1;
