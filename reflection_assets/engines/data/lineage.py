"""Record lineage: the chain from a source row through the oracle calls to the final pair,
read from the lineage.* views."""

from __future__ import annotations

from dataclasses import dataclass

from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.store.storage import Database
from reflection_assets.errors import UserError

SQL = queries("data_lineage")


def one_line(value: object, width: int = 100) -> str:
    """Text on one line (breaks shown as ⏎), cut to `width` characters: how `reflection
    lineage` and the assets' metadata tables show a field."""
    text = "" if value is None else str(value).replace("\n", " ⏎ ")
    return text if len(text) <= width else text[: width - 1] + "…"


class LineageError(UserError):
    """No such record. The message is meant for the user."""


@dataclass(frozen=True)
class RecordLineage:
    record: dict[str, object]
    calls: list[dict[str, object]]
    models: list[dict[str, object]]  # adapters trained on it, with the benchmark runs that scored them
    scores: list[dict[str, object]]  # the student's scores of each variant (V2), when scored
    decision: dict[str, object] | None  # what selective_dataset kept of it, and why


def _dicts(cursor) -> list[dict[str, object]]:
    columns = [c[0] for c in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def record_lineage(db: Database, record_id: str, dataset: str | None = None) -> list[RecordLineage]:
    """Every dataset's chain for a record id (or a unique prefix of one, 6+ characters)."""
    if len(record_id) < 6:
        raise LineageError(f"record id {record_id!r}: give at least 6 characters")
    with db.connect() as con:
        if dataset:
            records = con.execute(SQL.records_in_dataset, [record_id, dataset])
        else:
            records = con.execute(SQL.records, [record_id])
        columns = [c[0] for c in records.description]
        rows = [dict(zip(columns, row, strict=True)) for row in records.fetchall()]
        if len({r["record_id"] for r in rows}) > 1:
            ids = ", ".join(sorted({str(r["record_id"]) for r in rows})[:5])
            raise LineageError(f"{record_id!r} matches several records ({ids}…): give more characters")
        result = []
        for row in rows:
            calls = con.execute(SQL.record_oracle_calls, [row["dataset"], row["record_id"]])
            call_columns = [c[0] for c in calls.description]
            call_rows = [dict(zip(call_columns, c, strict=True)) for c in calls.fetchall()]
            models = con.execute(SQL.record_models, [row["dataset"], row["record_id"]])
            model_columns = [c[0] for c in models.description]
            model_rows = [dict(zip(model_columns, m, strict=True)) for m in models.fetchall()]
            key = [row["dataset"], row["record_id"]]
            scores = _dicts(con.execute(SQL.record_scores, key))
            decision = _dicts(con.execute(SQL.record_decision, key))
            result.append(RecordLineage(row, call_rows, model_rows, scores, decision[0] if decision else None))
    if not result:
        scope = f" in dataset {dataset!r}" if dataset else ""
        raise LineageError(f"no record {record_id!r}{scope}: ids are in raw.records (see `reflection export --stage raw`)")
    return result


def oracle_spend(db: Database, dataset: str) -> list[tuple[str, int, int, float]]:
    """(stage, calls answered, tokens, cost) behind the current rows of each reflection
    stage and the latest benchmark's judging; a reply shared by several records counts once."""
    with db.connect() as con:
        reflection = con.execute(SQL.reflection_spend, [dataset]).fetchall()
        judge = con.execute(SQL.judge_spend, [dataset]).fetchall()
    return [tuple(r) for r in reflection] + [tuple(r) for r in judge if r[1]]


def recycling_summary(db: Database, dataset: str) -> list[str]:
    """What recycling and selection made of a dataset, in a line each (none for a stage
    with no rows yet): for the end of `reflection run`."""
    names = {"both": "rewritten in both phases", "instruction_reflected": "in phase 1 only (new instruction and answer)",
             "response_reflected": "in phase 2 only (a better answer)", "original": "kept as they were"}
    with db.connect() as con:
        recycled = dict(con.execute(SQL.recycled_provenance, [dataset]).fetchall())
        kept = dict(con.execute(SQL.decision_counts, [dataset]).fetchall())
    lines = []
    if recycled:
        parts = ", ".join(f"{recycled[p]} {text}" for p, text in names.items() if recycled.get(p))
        lines.append(f"  {dataset} recycled: {sum(recycled.values())} pairs, {parts}")
    if kept:
        total, none = sum(kept.values()), kept.get("none", 0)
        lines.append(
            f"  {dataset} selected by the student (V2): {total - none} of {total} records "
            f"({kept.get('both', 0)} both phases, {kept.get('response', 0)} answer only)"
        )
    return lines
