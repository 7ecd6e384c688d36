"""Ingesting a registered dataset: parse its source once per version into raw.source_rows,
then point a shard at that version. Parsing the whole file happens once however many
shards are materialized; a file that fails to parse writes nothing."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from reflection_assets.engines.data.datasets import DatasetSpec
from reflection_assets.engines.data.sources import (
    SourceError,
    detect_format,
    fingerprint_source,
    read_source,
    resolve_source,
)
from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.store.storage import Database
from reflection_assets.method.digests import json_digest
from reflection_assets.method.records import (
    NORMALIZATION_VERSION,
    Record,
    RejectReason,
    reject_shard,
    shard_of,
    to_record,
)

SQL = queries("data_ingest")

SOURCE_ROW_SCHEMA = {
    "shard": pl.Int32,
    "source_row": pl.Int64,
    "status": pl.Utf8,
    "detail": pl.Utf8,
    "record_id": pl.Utf8,
    "instruction": pl.Utf8,
    "input": pl.Utf8,
    "output": pl.Utf8,
}


@dataclass(frozen=True)
class StagedVersion:
    dataset: str
    version: str
    source_path: str
    source_sha256: str
    format: str
    rows_read: int
    parsed_now: bool


def classify_rows(
    rows: list[tuple[int, object]],
    field_map: dict[str, str],
    shard_count: int,
    max_record_chars: int,
) -> pl.DataFrame:
    """Every source row with its shard and status: ok, duplicate, or why it was rejected."""
    out: dict[str, list] = {name: [] for name in SOURCE_ROW_SCHEMA}
    first_row_of: dict[str, int] = {}
    for source_row, row in rows:
        result = to_record(row, field_map, max_record_chars)
        if isinstance(result, Record):
            first = first_row_of.setdefault(result.record_id, source_row)
            status = "ok" if first == source_row else RejectReason.DUPLICATE
            detail = None if status == "ok" else f"same record as row {first}"
            values = (
                shard_of(result.record_id, shard_count),
                source_row,
                status,
                detail,
                result.record_id,
                result.instruction,
                result.input,
                result.output,
            )
        else:
            values = (
                reject_shard(source_row, shard_count),
                source_row,
                result.reason,
                result.detail,
                None,
                None,
                None,
                None,
            )
        for name, value in zip(SOURCE_ROW_SCHEMA, values, strict=True):
            out[name].append(value)
    return pl.DataFrame(out, schema=SOURCE_ROW_SCHEMA).sort("shard", "source_row")


def stage_version(
    db: Database, spec: DatasetSpec, shard_count: int, max_record_chars: int
) -> StagedVersion:
    """Parse the dataset's source into raw.source_rows unless this version is already there."""
    path = resolve_source(spec.source)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder (dataset {spec.name!r})")
    fmt = spec.format or detect_format(path)
    sha = fingerprint_source(path)
    parts: list[object] = [sha, fmt, spec.field_map, shard_count, max_record_chars, NORMALIZATION_VERSION]
    if spec.limit is not None:  # appended only when set: a dataset without one keeps its version
        parts.append({"limit": spec.limit})
    version = json_digest(parts, ascii=True)
    with db.connect() as con:
        row = con.execute(SQL.staged_rows_read, [spec.name, version]).fetchone()
    if row is not None:
        return StagedVersion(spec.name, version, str(path), sha, fmt, row[0], parsed_now=False)

    rows = read_source(path, fmt)
    frame = classify_rows(rows[: spec.limit] if spec.limit else rows, spec.field_map, shard_count, max_record_chars)
    frame = frame.with_columns(
        pl.lit(spec.name).alias("dataset"), pl.lit(version).alias("version")
    )
    with db.transaction() as con:
        # Another process may have staged the same version while this one parsed.
        if con.execute(SQL.version_staged, [spec.name, version]).fetchone() is None:
            con.execute(SQL.insert_source_rows)  # reads the polars frame `frame`
            con.execute(
                SQL.insert_source_version,
                [spec.name, version, spec.source, str(path), sha, fmt, shard_count, frame.height],
            )
    return StagedVersion(spec.name, version, str(path), sha, fmt, frame.height, parsed_now=True)


def point_shard(db: Database, dataset: str, shard: int, version: str) -> None:
    with db.connect() as con:
        con.execute(SQL.point_shard, [dataset, shard, version])


def shard_fingerprint(db: Database, dataset: str, shard: int) -> str:
    """Changes exactly when the shard's set of records changes: its Dagster data version."""
    with db.connect() as con:
        value = con.execute(SQL.shard_fingerprint, [dataset, shard]).fetchone()[0]
    return value[:16]


@dataclass(frozen=True)
class ShardSummary:
    rows: int
    rejects: dict[str, int]
    length_stats: dict[str, dict[str, float]]
    preview: pl.DataFrame
    reject_preview: pl.DataFrame

    @property
    def rows_considered(self) -> int:
        return self.rows + sum(self.rejects.values())

    @property
    def reject_share(self) -> float:
        """Share of the shard's rows that were unusable; duplicates are not faults."""
        faults = sum(n for reason, n in self.rejects.items() if reason != RejectReason.DUPLICATE)
        considered = self.rows_considered
        return faults / considered if considered else 0.0


def shard_summary(db: Database, dataset: str, shard: int, preview_rows: int = 5) -> ShardSummary:
    with db.connect() as con:
        rows = con.execute(SQL.shard_record_count, [dataset, shard]).fetchone()[0]
        rejects = dict(con.execute(SQL.shard_reject_counts, [dataset, shard]).fetchall())
        stats = con.execute(SQL.shard_length_stats, [dataset, shard]).fetchone()
        preview = con.execute(SQL.shard_preview, [dataset, shard, preview_rows]).pl()
        reject_preview = con.execute(SQL.shard_reject_preview, [dataset, shard, preview_rows]).pl()
    length_stats = {
        field: {
            "mean_chars": round(float(stats[i * 3] or 0), 1),
            "median_chars": float(stats[i * 3 + 1] or 0),
            "max_chars": int(stats[i * 3 + 2] or 0),
        }
        for i, field in enumerate(("instruction", "input", "output"))
    }
    return ShardSummary(rows, rejects, length_stats, preview, reject_preview)
