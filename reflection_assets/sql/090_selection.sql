-- Selective recycling (V2): the student's scores of every variant of a record, and what the
-- official rule keeps. (After 040: the variant views read the reflection tables.)

-- Scores by what made them: the student model, template, max_length, precision and the
-- pair's text (score_key = sha256 of all of it). Re-scoring the same text computes nothing.
CREATE TABLE IF NOT EXISTS selection.score_cache (
    score_key                   VARCHAR PRIMARY KEY,
    status                      VARCHAR NOT NULL,   -- ok, empty_output, empty_instruction, too_long, too_short, model_error
    reason                      VARCHAR NOT NULL,
    loss_output_condition       DOUBLE,             -- NULL exactly when status is not ok
    loss_output_alone           DOUBLE,
    loss_instruction_condition  DOUBLE,
    loss_instruction_alone      DOUBLE,
    truncated                   BOOLEAN NOT NULL,   -- a span cut to max_length, alike in both its forms
    created_at                  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    CHECK ((status = 'ok') = (loss_output_condition IS NOT NULL))
);

-- One row per record and variant of each scored shard; a shard is replaced whole.
CREATE TABLE IF NOT EXISTS selection.student_scores (
    dataset          VARCHAR NOT NULL,
    shard            INTEGER NOT NULL,
    record_id        VARCHAR NOT NULL,
    variant          VARCHAR NOT NULL,   -- original, instruction, response, both
    instruction      VARCHAR NOT NULL,
    input            VARCHAR NOT NULL,
    output           VARCHAR NOT NULL,
    score_key        VARCHAR NOT NULL,
    student          VARCHAR NOT NULL,   -- the model's identity
    template         VARCHAR NOT NULL,
    status           VARCHAR NOT NULL,
    reason           VARCHAR NOT NULL,
    ppl_output_condition       DOUBLE,   -- ppl(output | template(instruction, input))
    ppl_output_alone           DOUBLE,   -- ppl(output)
    ppl_instruction_condition  DOUBLE,   -- ppl(instruction + input | reverse template(output))
    ppl_instruction_alone      DOUBLE,   -- ppl(instruction + input)
    ifd              DOUBLE,             -- ppl_output_condition / ppl_output_alone
    r_ifd            DOUBLE,             -- ppl_instruction_condition / ppl_instruction_alone
    ifd_loss         DOUBLE,             -- the same ratios of the losses
    r_ifd_loss       DOUBLE,
    truncated        BOOLEAN NOT NULL,
    materialized_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, record_id, variant),
    CHECK ((status = 'ok') = (ifd IS NOT NULL) AND (status = 'ok') = (r_ifd IS NOT NULL))
);

-- The four variants of each record, as the reflection tables hold them: the original pair;
-- phase 1's pair (the original where phase 1 kept it); phase 2 on the original pair; phase 2
-- on phase 1's pair (V1's chain). Each with the requests that made it.
CREATE OR REPLACE VIEW selection.variants AS
SELECT r.dataset, r.shard, r.record_id, 'original' AS variant, r.instruction, r.input, r.output,
       NULL AS instruction_request_key, NULL AS response_request_key, NULL AS fingerprint
FROM raw.records AS r
UNION ALL
SELECT r.dataset, r.shard, r.record_id, 'instruction',
       coalesce(i.new_instruction, r.instruction), CASE WHEN i.replaced THEN '' ELSE r.input END,
       coalesce(i.new_output, r.output), i.request_key, NULL, i.fingerprint
FROM raw.records AS r JOIN reflect.instructions AS i USING (dataset, record_id)
UNION ALL
SELECT r.dataset, r.shard, r.record_id, 'response', r.instruction, r.input,
       coalesce(o.better_output, r.output), NULL, o.request_key, o.fingerprint
FROM raw.records AS r
JOIN reflect.responses AS o ON o.dataset = r.dataset AND o.record_id = r.record_id AND o.variant = 'original'
UNION ALL
SELECT r.dataset, r.shard, r.record_id, 'both',
       coalesce(i.new_instruction, r.instruction), CASE WHEN i.replaced THEN '' ELSE r.input END,
       coalesce(c.better_output, i.new_output, r.output), i.request_key, c.request_key,
       coalesce(c.fingerprint, i.fingerprint)
FROM raw.records AS r
JOIN reflect.instructions AS i USING (dataset, record_id)
JOIN reflect.responses AS c ON c.dataset = r.dataset AND c.record_id = r.record_id AND c.variant = 'chain';

-- What the rule decided for every record of each selected shard: the kept variant (NULL:
-- nothing kept) and why, with the scores that decided it. A shard is replaced whole.
CREATE TABLE IF NOT EXISTS selection.decisions (
    dataset            VARCHAR NOT NULL,
    shard              INTEGER NOT NULL,
    record_id          VARCHAR NOT NULL,
    kept               VARCHAR,            -- both, response, or NULL
    reason             VARCHAR NOT NULL,
    cut_by_top_k       BOOLEAN NOT NULL,   -- selected by the rule, then left out by top_k
    top_k              DOUBLE,             -- the fraction kept by IFD, when set
    original_ifd       DOUBLE,
    original_r_ifd     DOUBLE,
    instruction_ifd    DOUBLE,
    instruction_r_ifd  DOUBLE,
    response_ifd       DOUBLE,
    response_r_ifd     DOUBLE,
    both_ifd           DOUBLE,
    both_r_ifd         DOUBLE,
    materialized_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, record_id)
);

-- The student-selected training set: one row per kept record, in the layout of
-- reflect.recycled (provenance both or response_reflected), with the scores that kept it.
CREATE TABLE IF NOT EXISTS selection.selective (
    dataset                  VARCHAR NOT NULL,
    shard                    INTEGER NOT NULL,
    record_id                VARCHAR NOT NULL,
    kind                     VARCHAR NOT NULL,   -- both, response: the kept variant
    instruction              VARCHAR NOT NULL,
    input                    VARCHAR NOT NULL,
    output                   VARCHAR NOT NULL,
    provenance               VARCHAR NOT NULL,   -- both, response_reflected
    source_file              VARCHAR NOT NULL,
    source_row               BIGINT NOT NULL,
    instruction_request_key  VARCHAR,
    response_request_key     VARCHAR,
    fingerprint              VARCHAR,
    ifd                      DOUBLE NOT NULL,
    r_ifd                    DOUBLE NOT NULL,
    reason                   VARCHAR NOT NULL,
    materialized_at          TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, record_id)
);

-- For `reflection export --stage scores`: every variant's scores and whether it was kept.
CREATE OR REPLACE VIEW selection.score_stage AS
SELECT s.dataset, s.shard, s.record_id, s.variant, s.instruction, s.input, s.output,
       s.ppl_output_condition, s.ppl_output_alone, s.ppl_instruction_condition, s.ppl_instruction_alone,
       s.ifd, s.r_ifd, s.status, s.reason, coalesce(d.kept = s.variant AND NOT d.cut_by_top_k, false) AS selected,
       r.source_row
FROM selection.student_scores AS s
JOIN raw.records AS r USING (dataset, record_id)
LEFT JOIN selection.decisions AS d USING (dataset, record_id);
