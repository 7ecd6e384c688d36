-- Storing a benchmark run and reading the latest one back: engines/benchmark/run.py.

-- name: delete_run_rows
-- Clears a run's rows of {table} (bench.runs, judgments, outcomes, scores or heldout_loss).
DELETE FROM {table} WHERE run_id = ?;

-- name: insert_run
INSERT INTO bench.runs (run_id, dataset, baseline_adapter, recycled_adapter, selective_adapter,
    base_model, judge_fingerprint, judge_model, generation_json, testsets_json)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_judgments
-- A run's judgments, from the polars frame `judgment_frame`.
INSERT INTO bench.judgments BY NAME SELECT * FROM judgment_frame;

-- name: insert_outcomes
-- A run's outcomes, from the polars frame `outcome_rows`.
INSERT INTO bench.outcomes BY NAME SELECT * FROM outcome_rows;

-- name: insert_scores
-- A run's scores, from the polars frame `score_rows`.
INSERT INTO bench.scores BY NAME SELECT * FROM score_rows;

-- name: insert_heldout_loss
-- A run's held-out losses, from the polars frame `loss_rows`.
INSERT INTO bench.heldout_loss BY NAME SELECT * FROM loss_rows;

-- name: latest_run
-- A dataset's latest benchmark run.
SELECT run_id, baseline_adapter, recycled_adapter, judge_model, judge_fingerprint, created_at,
    selective_adapter
FROM bench.latest WHERE dataset = ?;

-- name: run_scores
-- A run's scores over whole test sets (category 'all').
SELECT comparison, testset, win, tie, lose, unparsed, winning_score, winning_score_low,
    winning_score_high, win_rate, win_rate_low, win_rate_high, p_value
FROM bench.scores
WHERE run_id = ? AND category = 'all' ORDER BY comparison, testset;

-- name: run_heldout_loss
-- A run's held-out losses.
SELECT model, reference, examples, loss, perplexity FROM bench.heldout_loss WHERE run_id = ?
ORDER BY reference, model;
