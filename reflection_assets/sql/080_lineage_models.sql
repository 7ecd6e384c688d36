-- Record lineage, continued past the data: from a record to the adapters trained on it and
-- the benchmark runs that scored those adapters. (After 060 and 070: it reads their tables.)
CREATE OR REPLACE VIEW lineage.record_models AS
WITH run_scores AS (
    SELECT run_id, comparison,
           string_agg(testset || ' ' || coalesce(printf('%.3f', winning_score), 'n/a'), ', ' ORDER BY testset) AS winning_scores
    FROM bench.scores
    WHERE category = 'all'
    GROUP BY run_id, comparison
)
SELECT a.dataset, ar.record_id, a.adapter_id, a.variant, a.path, a.created_at AS trained_at,
       c.adapter_id IS NOT NULL AS is_current,
       b.run_id AS benchmark_run, b.judge_model, b.created_at AS benchmarked_at, s.winning_scores
FROM training.adapter_records AS ar
JOIN training.adapters AS a USING (adapter_id)
LEFT JOIN training.current_adapters AS c ON c.adapter_id = a.adapter_id
LEFT JOIN bench.runs AS b ON a.adapter_id IN (b.baseline_adapter, b.recycled_adapter, b.selective_adapter)
-- The selective adapter's lineage shows its own comparison; the others, recycled's.
LEFT JOIN run_scores AS s ON s.run_id = b.run_id
    AND s.comparison = CASE a.variant WHEN 'selective' THEN 'selective_vs_baseline' ELSE 'recycled_vs_baseline' END;
