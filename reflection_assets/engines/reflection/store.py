"""Reading and writing the reflection tables, one shard at a time, each write one
transaction: a shard's rows are replaced whole or not at all."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from reflection_assets.engines.reflection.phases import PhaseResult
from reflection_assets.engines.data.shards import mark_written, require_upstream
from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.store.storage import Database
from reflection_assets.method.records import Record
from reflection_assets.errors import UserError
from reflection_assets.method.prompts import BETTER_ANSWER, NEW_ANSWER, NEW_INSTRUCTION

SQL = queries("reflection_store")

RECYCLE_MODES = {"chain": "reflect.recycle_chain", "instruction": "reflect.recycle_instruction",
                 "response": "reflect.recycle_response"}
# The stage that writes each table, as registry.stage_shards names it.
STAGE_OF_TABLE = {"reflect.instructions": "reflected_instructions", "reflect.responses": "reflected_responses"}


class ReflectionInputError(UserError):
    """An upstream stage is missing for this shard. The message says what to run."""


def raw_pairs(db: Database, dataset: str, shard: int) -> list[Record]:
    with db.connect() as con:
        rows = con.execute(SQL.raw_pairs, [dataset, shard]).fetchall()
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
        missing = con.execute(SQL.missing_instruction_reflections, [dataset, shard]).fetchone()[0]
        if missing:
            raise ReflectionInputError(
                f"{missing} record(s) of {dataset}|{shard:02d} have no instruction reflection: "
                "materialize reflected_instructions for this shard first"
            )
        rows = con.execute(SQL.instruction_reflected_pairs, [dataset, shard]).fetchall()
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
        con.execute(SQL.format("delete_shard_rows", table=table), [dataset, shard])
        columns = ", ".join(frame.columns)
        con.execute(
            SQL.format("insert_shard_rows", table=table, columns=columns),
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
        available = con.execute(SQL.format("recycle_available", view=view), [dataset, shard]).fetchone()[0]
        expected = con.execute(SQL.shard_record_count, [dataset, shard]).fetchone()[0]
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
        con.execute(SQL.delete_recycled, [dataset, shard])
        con.execute(SQL.format("insert_recycled", view=view), [dataset, shard])
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
        row = con.execute(SQL.format("shard_health", view=HEALTH_VIEWS[stage]), [dataset, shard]).fetchone()
    return ShardHealth(*(row or (0, 0, 0, 0)))


@dataclass(frozen=True)
class RecycledSummary:
    provenance: dict[str, int]
    preview: pl.DataFrame  # the first rows, reflected ones first
    mean_chars: dict[str, float]


def recycled_summary(db: Database, dataset: str, shard: int, preview_rows: int = 5) -> RecycledSummary:
    with db.connect() as con:
        provenance = dict(con.execute(SQL.recycled_provenance, [dataset, shard]).fetchall())
        preview = con.execute(SQL.recycled_preview, [dataset, shard, preview_rows]).pl()
        lengths = con.execute(SQL.recycled_mean_chars, [dataset, shard]).fetchone()
    return RecycledSummary(provenance, preview, {"instruction": lengths[0] or 0.0, "output": lengths[1] or 0.0})


STAGE_CALLS = {"instructions": "instruction%", "responses": "response%"}


def served_by(db: Database, stage: str, dataset: str, shard: int) -> dict[str, int]:
    """The replies behind one shard's rows of a stage (`instructions` or `responses`), by
    what served them: the completion's model, with its system_fingerprint when it had one."""
    with db.connect() as con:
        rows = con.execute(SQL.served_by, [dataset, shard, STAGE_CALLS[stage]]).fetchall()
    return dict(rows)


def judge_served_by(db: Database, run_id: str) -> dict[str, int]:
    """The judge's replies behind one benchmark run, by what served them."""
    with db.connect() as con:
        rows = con.execute(SQL.judge_served_by, [run_id]).fetchall()
    return dict(rows)
