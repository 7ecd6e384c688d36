"""Record lineage: the chain from a source row through the oracle calls to the final pair,
read from the lineage.* views."""

from __future__ import annotations

from dataclasses import dataclass

from reflection_assets.engines.storage import Database
from reflection_assets.errors import UserError


class LineageError(UserError):
    """No such record. The message is meant for the user."""


@dataclass(frozen=True)
class RecordLineage:
    record: dict[str, object]
    calls: list[dict[str, object]]
    models: list[dict[str, object]]  # adapters trained on it, with the benchmark runs that scored them


def record_lineage(db: Database, record_id: str, dataset: str | None = None) -> list[RecordLineage]:
    """Every dataset's chain for a record id (or a unique prefix of one, 6+ characters)."""
    if len(record_id) < 6:
        raise LineageError(f"record id {record_id!r}: give at least 6 characters")
    with db.connect() as con:
        where = "record_id LIKE ? || '%'" + (" AND dataset = ?" if dataset else "")
        params = [record_id] + ([dataset] if dataset else [])
        records = con.execute(f"SELECT * FROM lineage.records WHERE {where} ORDER BY dataset", params)
        columns = [c[0] for c in records.description]
        rows = [dict(zip(columns, row, strict=True)) for row in records.fetchall()]
        if len({r["record_id"] for r in rows}) > 1:
            ids = ", ".join(sorted({str(r["record_id"]) for r in rows})[:5])
            raise LineageError(f"{record_id!r} matches several records ({ids}…): give more characters")
        result = []
        for row in rows:
            calls = con.execute(
                "SELECT * FROM lineage.oracle_calls WHERE dataset = ? AND record_id = ? ORDER BY stage",
                [row["dataset"], row["record_id"]],
            )
            call_columns = [c[0] for c in calls.description]
            call_rows = [dict(zip(call_columns, c, strict=True)) for c in calls.fetchall()]
            models = con.execute(
                "SELECT * FROM lineage.record_models WHERE dataset = ? AND record_id = ? "
                "ORDER BY trained_at, variant, benchmarked_at",
                [row["dataset"], row["record_id"]],
            )
            model_columns = [c[0] for c in models.description]
            model_rows = [dict(zip(model_columns, m, strict=True)) for m in models.fetchall()]
            result.append(RecordLineage(row, call_rows, model_rows))
    if not result:
        scope = f" in dataset {dataset!r}" if dataset else ""
        raise LineageError(f"no record {record_id!r}{scope}: ids are in raw.records (see `reflection export --stage raw`)")
    return result
