-- Reflection stage. One row per record (and variant) of each materialized shard; a shard is
-- replaced as a whole when it is re-materialized. Request keys point into oracle.replies.

-- Phase 1: instruction reflection. A pair is replaced as a whole or not at all.
CREATE TABLE IF NOT EXISTS reflect.instructions (
    dataset            VARCHAR NOT NULL,
    shard              INTEGER NOT NULL,
    record_id          VARCHAR NOT NULL,
    request_key        VARCHAR NOT NULL,
    repair_key         VARCHAR,            -- the follow-up call, when one was made
    answer_key         VARCHAR,            -- compact profile: the second call, the new answer
    fingerprint        VARCHAR NOT NULL,   -- oracle + prompt version
    prompt_version     VARCHAR NOT NULL,
    outcome            VARCHAR NOT NULL,   -- ok, missing_marker, template_echo, truncated, empty, oracle_error
    reason             VARCHAR NOT NULL,
    repaired           BOOLEAN NOT NULL,
    replaced           BOOLEAN NOT NULL,
    new_instruction    VARCHAR,            -- set exactly when replaced
    new_output         VARCHAR,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cost_usd           DOUBLE NOT NULL,
    materialized_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, record_id),
    CHECK (replaced = (new_instruction IS NOT NULL) AND replaced = (new_output IS NOT NULL))
);
-- Databases made before the compact profile existed.
ALTER TABLE reflect.instructions ADD COLUMN IF NOT EXISTS answer_key VARCHAR;

-- Phase 2: response reflection. variant 'chain' reflects the pair phase 1 produced (the
-- original when phase 1 kept it), as V1 does; variant 'original' reflects the original.
CREATE TABLE IF NOT EXISTS reflect.responses (
    dataset            VARCHAR NOT NULL,
    shard              INTEGER NOT NULL,
    record_id          VARCHAR NOT NULL,
    variant            VARCHAR NOT NULL,   -- chain, original
    base               VARCHAR NOT NULL,   -- instruction_reflected, original: the pair reflected
    instruction        VARCHAR NOT NULL,   -- the pair's instruction and input, as sent
    input              VARCHAR NOT NULL,
    request_key        VARCHAR NOT NULL,
    repair_key         VARCHAR,
    fingerprint        VARCHAR NOT NULL,
    prompt_version     VARCHAR NOT NULL,
    outcome            VARCHAR NOT NULL,
    reason             VARCHAR NOT NULL,
    repaired           BOOLEAN NOT NULL,
    replaced           BOOLEAN NOT NULL,
    better_output      VARCHAR,            -- set exactly when replaced
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cost_usd           DOUBLE NOT NULL,
    materialized_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, record_id, variant),
    CHECK (replaced = (better_output IS NOT NULL))
);

-- The training set: one row per record, with where each field came from.
CREATE TABLE IF NOT EXISTS reflect.recycled (
    dataset                  VARCHAR NOT NULL,
    shard                    INTEGER NOT NULL,
    record_id                VARCHAR NOT NULL,
    mode                     VARCHAR NOT NULL,   -- chain (V1), instruction, response
    instruction              VARCHAR NOT NULL,
    input                    VARCHAR NOT NULL,
    output                   VARCHAR NOT NULL,
    provenance               VARCHAR NOT NULL,   -- original, instruction_reflected, response_reflected, both
    source_file              VARCHAR NOT NULL,
    source_row               BIGINT NOT NULL,
    instruction_request_key  VARCHAR,
    response_request_key     VARCHAR,
    instruction_outcome      VARCHAR,
    response_outcome         VARCHAR,
    fingerprint              VARCHAR,
    materialized_at          TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, record_id)
);

-- The three ways to build it, with the same columns. recycled_dataset copies one shard of
-- the view its `mode` names into reflect.recycled.
CREATE OR REPLACE VIEW reflect.recycle_chain AS
SELECT r.dataset, r.shard, r.record_id, 'chain' AS mode,
       coalesce(i.new_instruction, r.instruction) AS instruction,
       CASE WHEN i.replaced THEN '' ELSE r.input END AS input,
       coalesce(c.better_output, i.new_output, r.output) AS output,
       CASE WHEN i.replaced AND c.replaced THEN 'both'
            WHEN i.replaced THEN 'instruction_reflected'
            WHEN c.replaced THEN 'response_reflected'
            ELSE 'original' END AS provenance,
       r.source_file, r.source_row,
       i.request_key AS instruction_request_key, c.request_key AS response_request_key,
       i.outcome AS instruction_outcome, c.outcome AS response_outcome,
       coalesce(c.fingerprint, i.fingerprint) AS fingerprint
FROM raw.records AS r
JOIN reflect.instructions AS i USING (dataset, record_id)
JOIN reflect.responses AS c ON c.dataset = r.dataset AND c.record_id = r.record_id AND c.variant = 'chain';

CREATE OR REPLACE VIEW reflect.recycle_instruction AS
SELECT r.dataset, r.shard, r.record_id, 'instruction' AS mode,
       coalesce(i.new_instruction, r.instruction) AS instruction,
       CASE WHEN i.replaced THEN '' ELSE r.input END AS input,
       coalesce(i.new_output, r.output) AS output,
       CASE WHEN i.replaced THEN 'instruction_reflected' ELSE 'original' END AS provenance,
       r.source_file, r.source_row,
       i.request_key AS instruction_request_key, NULL AS response_request_key,
       i.outcome AS instruction_outcome, NULL AS response_outcome, i.fingerprint
FROM raw.records AS r
JOIN reflect.instructions AS i USING (dataset, record_id);

CREATE OR REPLACE VIEW reflect.recycle_response AS
SELECT r.dataset, r.shard, r.record_id, 'response' AS mode,
       r.instruction, r.input, coalesce(o.better_output, r.output) AS output,
       CASE WHEN o.replaced THEN 'response_reflected' ELSE 'original' END AS provenance,
       r.source_file, r.source_row,
       NULL AS instruction_request_key, o.request_key AS response_request_key,
       NULL AS instruction_outcome, o.outcome AS response_outcome, o.fingerprint
FROM raw.records AS r
JOIN reflect.responses AS o ON o.dataset = r.dataset AND o.record_id = r.record_id AND o.variant = 'original';

-- What the asset checks look at, per shard: empty replacements, and mixed pairs (a new
-- instruction without its new answer, or a better answer attached to an instruction other
-- than the one phase 1 left for that record).
CREATE OR REPLACE VIEW reflect.instruction_health AS
SELECT dataset, shard, count(*) AS rows,
       count(*) FILTER (WHERE outcome = 'ok') AS ok,
       count(*) FILTER (WHERE replaced AND (trim(new_instruction) = '' OR trim(new_output) = '')) AS empty_replacements,
       count(*) FILTER (WHERE (new_instruction IS NULL) <> (new_output IS NULL)) AS mixed_pairs
FROM reflect.instructions
GROUP BY dataset, shard;

CREATE OR REPLACE VIEW reflect.response_health AS
SELECT c.dataset, c.shard, count(*) AS rows,
       count(*) FILTER (WHERE c.outcome = 'ok') AS ok,
       count(*) FILTER (WHERE c.replaced AND trim(c.better_output) = '') AS empty_replacements,
       count(*) FILTER (
           WHERE c.variant = 'chain'
             AND c.instruction <> coalesce(i.new_instruction, r.instruction)
       ) AS mixed_pairs
FROM reflect.responses AS c
JOIN raw.records AS r ON r.dataset = c.dataset AND r.record_id = c.record_id
LEFT JOIN reflect.instructions AS i ON i.dataset = c.dataset AND i.record_id = c.record_id
GROUP BY c.dataset, c.shard;

-- Each stage's result per record, for inspection (`reflection export --stage ...`): the pair
-- as that stage left it (the new one where it replaced it, the one it was given otherwise),
-- with the outcome and its reason.
CREATE OR REPLACE VIEW reflect.instruction_stage AS
SELECT i.dataset, i.shard, i.record_id, 'instruction' AS variant, i.outcome, i.reason,
       coalesce(i.new_instruction, r.instruction) AS instruction,
       CASE WHEN i.replaced THEN '' ELSE r.input END AS input,
       coalesce(i.new_output, r.output) AS output,
       r.source_row
FROM reflect.instructions AS i
JOIN raw.records AS r USING (dataset, record_id);

CREATE OR REPLACE VIEW reflect.response_stage AS
SELECT c.dataset, c.shard, c.record_id, c.variant, c.outcome, c.reason, c.instruction, c.input,
       coalesce(c.better_output, CASE WHEN c.base = 'instruction_reflected' THEN i.new_output ELSE r.output END) AS output,
       r.source_row
FROM reflect.responses AS c
JOIN raw.records AS r ON r.dataset = c.dataset AND r.record_id = c.record_id
LEFT JOIN reflect.instructions AS i ON i.dataset = c.dataset AND i.record_id = c.record_id;
