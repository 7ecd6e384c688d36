-- Record-level lineage: from a source row to every oracle call made for it and the pair
-- that ended up in the training set. `reflection lineage RECORD_ID` prints these.

-- Every oracle request made for a record, by stage, with what it cost and how it ended.
CREATE OR REPLACE VIEW lineage.oracle_calls AS
WITH asked AS (
    SELECT dataset, record_id, 'instruction' AS stage, request_key,
           CASE WHEN repaired THEN 'failed; repaired by the follow-up' ELSE outcome END AS outcome, reason
    FROM reflect.instructions
    UNION ALL
    SELECT dataset, record_id, 'instruction repair', repair_key, outcome, reason FROM reflect.instructions
    WHERE repair_key IS NOT NULL
    UNION ALL
    SELECT dataset, record_id, 'instruction (answer)', answer_key, outcome, reason FROM reflect.instructions
    WHERE answer_key IS NOT NULL
    UNION ALL
    SELECT dataset, record_id, 'response (' || variant || ')', request_key,
           CASE WHEN repaired THEN 'failed; repaired by the follow-up' ELSE outcome END, reason
    FROM reflect.responses
    UNION ALL
    SELECT dataset, record_id, 'response (' || variant || ') repair', repair_key, outcome, reason FROM reflect.responses
    WHERE repair_key IS NOT NULL
),
failed AS (
    SELECT request_key, arg_max(error_kind || ': ' || message, created_at) AS last_error
    FROM oracle.failures GROUP BY request_key
)
SELECT a.dataset, a.record_id, a.stage, a.request_key,
       coalesce(o.fingerprint, '') AS fingerprint, o.model, o.served_model, o.system_fingerprint, o.finish_reason,
       o.prompt_tokens, o.completion_tokens, o.cost_usd, o.created_at AS answered_at,
       a.outcome AS parse_outcome, a.reason, f.last_error
FROM asked AS a
LEFT JOIN oracle.replies AS o USING (request_key)
LEFT JOIN failed AS f USING (request_key);

-- One row per record: where it came from, what each stage decided, what it became.
CREATE OR REPLACE VIEW lineage.records AS
SELECT r.dataset, r.record_id, r.shard, r.source_file, r.source_row, r.version AS source_version,
       r.instruction AS original_instruction, r.input AS original_input, r.output AS original_output,
       i.outcome AS instruction_outcome, i.replaced AS instruction_replaced,
       c.outcome AS response_outcome, c.replaced AS response_replaced,
       y.mode AS recycle_mode, y.provenance,
       y.instruction AS final_instruction, y.input AS final_input, y.output AS final_output
FROM raw.records AS r
LEFT JOIN reflect.instructions AS i USING (dataset, record_id)
LEFT JOIN reflect.responses AS c ON c.dataset = r.dataset AND c.record_id = r.record_id AND c.variant = 'chain'
LEFT JOIN reflect.recycled AS y ON y.dataset = r.dataset AND y.record_id = r.record_id;
