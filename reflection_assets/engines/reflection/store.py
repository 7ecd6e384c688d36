"""Reading and writing the reflection tables, one shard at a time, each write one
transaction: a shard's rows are replaced whole or not at all."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from reflection_assets.engines.reflection.phases import PhaseResult
from reflection_assets.engines.data.shards import mark_written, require_upstream
from reflection_assets.engines.store.storage import Database
from reflection_assets.method.records import Record
from reflection_assets.errors import UserError
from reflection_assets.method.prompts import BETTER_ANSWER, NEW_ANSWER, NEW_INSTRUCTION

RECYCLE_MODES = {"chain": "reflect.recycle_chain", "instruction": "reflect.recycle_instruction",
                 "response": "reflect.recycle_response"}
# The stage that writes each table, as registry.stage_shards names it.
STAGE_OF_TABLE = {"reflect.instructions": "reflected_instructions", "reflect.responses": "reflected_responses"}


class ReflectionInputError(UserError):
    """An upstream stage is missing for this shard. The message says what to run."""


def raw_pairs(db: Database, dataset: str, shard: int) -> list[Record]:
    with db.connect() as con:
        rows = con.execute(
            "SELECT record_id, instruction, input, output FROM raw.records "
            "WHERE dataset = ? AND shard = ? ORDER BY record_id",
            [dataset, shard],
        ).fetchall()
    return [Record(*row) for row in rows]


def phase1_pairs(db: Database, dataset: str, shard: int) -> list[Record]:
    """What reflected_instructions reflects: the shard's raw pairs. No pair is fine when
    raw_dataset ran on an empty shard; an error when it never ran on this shard."""
    pairs = raw_pairs(db, dataset, shard)
    if not pairs:
        with db.connect() as con:
            require_upstream(con, "reflected_instructions", dataset, shard)
    return pairs


def instruction_reflected_pairs(db: Database, dataset: str, shard: int) -> tuple[list[Record], set[str]]:
    """The pairs phase 1 produced (the original where it kept it), and which were replaced."""
    with db.connect() as con:
        missing = con.execute(
            """
            SELECT count(*) FROM raw.records AS r
            LEFT JOIN reflect.instructions AS i USING (dataset, record_id)
            WHERE r.dataset = ? AND r.shard = ? AND i.record_id IS NULL
            """,
            [dataset, shard],
        ).fetchone()[0]
        if missing:
            raise ReflectionInputError(
                f"{missing} record(s) of {dataset}|{shard:02d} have no instruction reflection: "
                "materialize reflected_instructions for this shard first"
            )
        rows = con.execute(
            """
            SELECT r.record_id,
                   coalesce(i.new_instruction, r.instruction),
                   CASE WHEN i.replaced THEN '' ELSE r.input END,
                   coalesce(i.new_output, r.output),
                   i.replaced
            FROM raw.records AS r JOIN reflect.instructions AS i USING (dataset, record_id)
            WHERE r.dataset = ? AND r.shard = ? ORDER BY r.record_id
            """,
            [dataset, shard],
        ).fetchall()
        if not rows:
            require_upstream(con, "reflected_responses", dataset, shard)
    return [Record(*row[:4]) for row in rows], {row[0] for row in rows if row[4]}


def response_variants(
    db: Database, dataset: str, shard: int, also_original: bool
) -> dict[str, tuple[list[Record], set[str]]]:
    """What phase 2 reflects for one shard, by variant: `chain`, the pairs phase 1 left
    (with the ids it replaced), and with `also_original`, `original`, the raw pairs. The
    stage and `reflection batch export` both ask exactly these."""
    variants = {"chain": instruction_reflected_pairs(db, dataset, shard)}
    if also_original:
        variants["original"] = (raw_pairs(db, dataset, shard), set())
    return variants


def _replace_shard(
    db: Database, table: str, dataset: str, shard: int, frame: pl.DataFrame, fingerprint: str, prompt_version: str
) -> None:
    """The shard's rows in `table` become `frame`'s, in one transaction."""
    with db.transaction() as con:
        con.execute(f"DELETE FROM {table} WHERE dataset = ? AND shard = ?", [dataset, shard])
        columns = ", ".join(frame.columns)
        con.execute(
            f"INSERT INTO {table} (dataset, shard, fingerprint, prompt_version, {columns}) "
            f"SELECT ?, ?, ?, ?, {columns} FROM frame",
            [dataset, shard, fingerprint, prompt_version],
        )
        mark_written(con, STAGE_OF_TABLE[table], dataset, shard, frame.height)


def _common(result: PhaseResult) -> dict[str, object]:
    return {
        "record_id": result.pair.record_id,
        "request_key": result.request_key,
        "repair_key": result.repair_key,
        "outcome": result.outcome,
        "reason": result.reason,
        "repaired": result.repaired,
        "replaced": result.ok,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost_usd": result.cost_usd,
    }


def write_instruction_results(
    db: Database, dataset: str, shard: int, results: list[PhaseResult], fingerprint: str, prompt_version: str
) -> None:
    frame = pl.DataFrame(
        [
            {
                **_common(r),
                "answer_key": r.answer_key,
                "new_instruction": r.sections.get(NEW_INSTRUCTION) if r.ok else None,
                "new_output": r.sections.get(NEW_ANSWER) if r.ok else None,
            }
            for r in results
        ],
        schema=INSTRUCTION_SCHEMA,
    )
    _replace_shard(db, "reflect.instructions", dataset, shard, frame, fingerprint, prompt_version)


def write_response_results(
    db: Database,
    dataset: str,
    shard: int,
    variants: dict[str, tuple[list[PhaseResult], set[str]]],
    fingerprint: str,
    prompt_version: str,
) -> None:
    """variants: name -> (results, record ids whose pair came from phase 1)."""
    rows = []
    for variant, (results, reflected) in variants.items():
        for r in results:
            rows.append(
                {
                    **_common(r),
                    "variant": variant,
                    "base": "instruction_reflected" if r.pair.record_id in reflected else "original",
                    "instruction": r.pair.instruction,
                    "input": r.pair.input,
                    "better_output": r.sections.get(BETTER_ANSWER) if r.ok else None,
                }
            )
    frame = pl.DataFrame(rows, schema=RESPONSE_SCHEMA)
    _replace_shard(db, "reflect.responses", dataset, shard, frame, fingerprint, prompt_version)


def write_recycled(db: Database, dataset: str, shard: int, mode: str) -> int:
    view = RECYCLE_MODES[mode]
    with db.transaction() as con:
        available = con.execute(
            f"SELECT count(*) FROM {view} WHERE dataset = ? AND shard = ?", [dataset, shard]
        ).fetchone()[0]
        expected = con.execute(
            "SELECT count(*) FROM raw.records WHERE dataset = ? AND shard = ?", [dataset, shard]
        ).fetchone()[0]
        if expected == 0:
            upstream = "reflected_instructions" if mode == "instruction" else "reflected_responses"
            require_upstream(con, "recycled_dataset", dataset, shard, upstream)
        if available < expected:
            needs = {
                "chain": "reflected_instructions and reflected_responses",
                "instruction": "reflected_instructions",
                "response": "reflected_responses with also_original: true",
            }[mode]
            raise ReflectionInputError(
                f"mode {mode!r} needs {needs} for {dataset}|{shard:02d}: only {available} of "
                f"{expected} records have them; materialize those first"
            )
        con.execute("DELETE FROM reflect.recycled WHERE dataset = ? AND shard = ?", [dataset, shard])
        con.execute(
            f"""
            INSERT INTO reflect.recycled
                (dataset, shard, record_id, mode, instruction, input, output, provenance,
                 source_file, source_row, instruction_request_key, response_request_key,
                 instruction_outcome, response_outcome, fingerprint)
            SELECT dataset, shard, record_id, mode, instruction, input, output, provenance,
                   source_file, source_row, instruction_request_key, response_request_key,
                   instruction_outcome, response_outcome, fingerprint
            FROM {view} WHERE dataset = ? AND shard = ?
            """,
            [dataset, shard],
        )
        mark_written(con, "recycled_dataset", dataset, shard, available)
    return available


_COMMON_SCHEMA = {
    "record_id": pl.Utf8,
    "request_key": pl.Utf8,
    "repair_key": pl.Utf8,
    "outcome": pl.Utf8,
    "reason": pl.Utf8,
    "repaired": pl.Boolean,
    "replaced": pl.Boolean,
    "prompt_tokens": pl.Int32,
    "completion_tokens": pl.Int32,
    "cost_usd": pl.Float64,
}
INSTRUCTION_SCHEMA = {**_COMMON_SCHEMA, "answer_key": pl.Utf8, "new_instruction": pl.Utf8, "new_output": pl.Utf8}
RESPONSE_SCHEMA = {
    **_COMMON_SCHEMA,
    "variant": pl.Utf8,
    "base": pl.Utf8,
    "instruction": pl.Utf8,
    "input": pl.Utf8,
    "better_output": pl.Utf8,
}


@dataclass(frozen=True)
class ShardHealth:
    rows: int
    ok: int
    empty_replacements: int
    mixed_pairs: int


HEALTH_VIEWS = {"instructions": "reflect.instruction_health", "responses": "reflect.response_health"}


def shard_health(db: Database, stage: str, dataset: str, shard: int) -> ShardHealth:
    """What the reflection stages' checks look at, for one shard (`stage`: instructions or
    responses)."""
    with db.connect() as con:
        row = con.execute(
            f"SELECT rows, ok, empty_replacements, mixed_pairs FROM {HEALTH_VIEWS[stage]} WHERE dataset = ? AND shard = ?",
            [dataset, shard],
        ).fetchone()
    return ShardHealth(*(row or (0, 0, 0, 0)))


@dataclass(frozen=True)
class RecycledSummary:
    provenance: dict[str, int]
    preview: pl.DataFrame  # the first rows, reflected ones first
    mean_chars: dict[str, float]


def recycled_summary(db: Database, dataset: str, shard: int, preview_rows: int = 5) -> RecycledSummary:
    with db.connect() as con:
        provenance = dict(
            con.execute(
                "SELECT provenance, count(*) FROM reflect.recycled WHERE dataset = ? AND shard = ? GROUP BY 1",
                [dataset, shard],
            ).fetchall()
        )
        preview = con.execute(
            "SELECT record_id, provenance, instruction, input, output FROM reflect.recycled "
            "WHERE dataset = ? AND shard = ? ORDER BY provenance DESC, record_id LIMIT ?",
            [dataset, shard, preview_rows],
        ).pl()
        lengths = con.execute(
            "SELECT round(avg(length(instruction)), 1), round(avg(length(output)), 1) FROM reflect.recycled "
            "WHERE dataset = ? AND shard = ?",
            [dataset, shard],
        ).fetchone()
    return RecycledSummary(provenance, preview, {"instruction": lengths[0] or 0.0, "output": lengths[1] or 0.0})


STAGE_CALLS = {"instructions": "instruction%", "responses": "response%"}
SERVED_LABEL = "coalesce(o.served_model, 'not recorded') || coalesce(' (' || o.system_fingerprint || ')', '')"


def served_by(db: Database, stage: str, dataset: str, shard: int) -> dict[str, int]:
    """The replies behind one shard's rows of a stage (`instructions` or `responses`), by
    what served them: the completion's model, with its system_fingerprint when it had one."""
    with db.connect() as con:
        rows = con.execute(
            f"SELECT {SERVED_LABEL}, count(DISTINCT o.request_key) FROM lineage.oracle_calls AS o "
            "JOIN raw.records AS r USING (dataset, record_id) "
            "WHERE o.dataset = ? AND r.shard = ? AND o.stage LIKE ? AND o.model IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1",
            [dataset, shard, STAGE_CALLS[stage]],
        ).fetchall()
    return dict(rows)


def judge_served_by(db: Database, run_id: str) -> dict[str, int]:
    """The judge's replies behind one benchmark run, by what served them."""
    with db.connect() as con:
        rows = con.execute(
            f"SELECT {SERVED_LABEL}, count(DISTINCT o.request_key) FROM bench.judge_calls AS j "
            "JOIN oracle.replies AS o USING (request_key) WHERE j.run_id = ? GROUP BY 1 ORDER BY 2 DESC, 1",
            [run_id],
        ).fetchall()
    return dict(rows)
