-- Record lineage and a dataset's oracle spend, from the lineage.* views: engines/data/lineage.py.

-- name: records
-- Every dataset's lineage row of the records whose id starts with the prefix given.
SELECT * FROM lineage.records WHERE record_id LIKE ? || '%' ORDER BY dataset;

-- name: records_in_dataset
-- The lineage rows of the records whose id starts with the prefix given, in one dataset.
SELECT * FROM lineage.records WHERE record_id LIKE ? || '%' AND dataset = ? ORDER BY dataset;

-- name: record_oracle_calls
-- The oracle calls behind a record, by stage.
SELECT * FROM lineage.oracle_calls WHERE dataset = ? AND record_id = ? ORDER BY stage;

-- name: record_models
-- The adapters trained on a record, with the benchmark runs that scored them.
SELECT * FROM lineage.record_models
WHERE dataset = ? AND record_id = ?
ORDER BY trained_at, variant, benchmarked_at;

-- name: record_scores
-- The student's scores of each variant of a record (V2), variants in pipeline order.
SELECT variant, status, reason, ifd, r_ifd, ppl_output_condition, ppl_output_alone,
       ppl_instruction_condition, ppl_instruction_alone
FROM selection.student_scores
WHERE dataset = ? AND record_id = ?
ORDER BY list_position(['original', 'instruction', 'response', 'both'], variant);

-- name: record_decision
-- What selective_dataset kept of a record, and why.
SELECT kept, reason, cut_by_top_k, top_k FROM selection.decisions WHERE dataset = ? AND record_id = ?;

-- name: reflection_spend
-- Per reflection stage: calls answered, tokens and cost behind a dataset's current rows; a reply
-- shared by several records counts once.
SELECT stage, count(DISTINCT request_key) FILTER (WHERE answered_at IS NOT NULL),
       coalesce(sum(prompt_tokens + completion_tokens), 0), coalesce(sum(cost_usd), 0)
FROM (SELECT DISTINCT stage, request_key, answered_at, prompt_tokens, completion_tokens, cost_usd
      FROM lineage.oracle_calls WHERE dataset = ?)
GROUP BY 1
ORDER BY 1;

-- name: judge_spend
-- Calls, tokens and cost of the judging in a dataset's latest benchmark, each reply once.
SELECT 'judge (latest benchmark)', count(*), coalesce(sum(o.prompt_tokens + o.completion_tokens), 0),
       coalesce(sum(o.cost_usd), 0)
FROM (SELECT DISTINCT j.request_key FROM bench.judge_calls j
      JOIN bench.latest l USING (run_id) WHERE l.dataset = ?) k
JOIN oracle.replies o USING (request_key);

-- name: recycled_provenance
-- A dataset's recycled rows, counted by provenance.
SELECT provenance, count(*) FROM reflect.recycled WHERE dataset = ? GROUP BY 1;

-- name: decision_counts
-- A dataset's selection decisions, counted by what was kept ('none' also for a record top_k cut).
SELECT coalesce(CASE WHEN cut_by_top_k THEN NULL ELSE kept END, 'none'), count(*)
FROM selection.decisions
WHERE dataset = ?
GROUP BY 1;
