"""Exporting a dataset (recycled or raw) in the layouts training tools read, with a
LLaMA-Factory dataset_info.json entry beside the file, and the recycled records as
preference pairs (`dpo`). Files are written whole or not at all (a temporary file renamed
into place)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from reflection_assets.engines.data.shards import written_shards
from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.store.storage import Database
from reflection_assets.method.layouts import user_turn
from reflection_assets.errors import UserError

SQL = queries("data_export")

EXPORT_FORMATS = ("alpaca", "jsonl", "sharegpt", "parquet", "dpo")
# Preference pairs: from the recycled records, or from those the student kept.
DPO_STAGES = ("recycled", "selective")
# Training sets: every format, with a LLaMA-Factory entry beside the file.
STAGES = {"recycled": "reflect.recycled", "raw": "raw.records", "selective": "selection.selective"}
# The asset that fills each stage's rows, for the message when there are none.
STAGE_ASSETS = {"recycled": "recycled_dataset", "raw": "raw_dataset", "selective": "selective_dataset"}
# A stage's result per record (and variant), with its outcome: for inspection, as rows.
INSPECTION_STAGES = {
    "reflected_instructions": ("reflect.instruction_stage", "reflected_instructions"),
    "reflected_responses": ("reflect.response_stage", "reflected_responses"),
    "scores": ("selection.score_stage", "student_scores"),
}
INSPECTION_FORMATS = ("jsonl", "parquet")
INSPECTION_COLUMNS = {
    "reflected_instructions": ("record_id", "variant", "outcome", "reason", "instruction", "input", "output"),
    "reflected_responses": ("record_id", "variant", "outcome", "reason", "instruction", "input", "output"),
    "scores": ("record_id", "variant", "instruction", "input", "output", "ppl_output_condition", "ppl_output_alone",
               "ppl_instruction_condition", "ppl_instruction_alone", "ifd", "r_ifd", "status", "reason", "selected"),
}


class ExportError(UserError):
    """Nothing to export, or a bad request. The message is meant for the user."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    rows: int
    dataset_info: Path | None  # None for a stage's inspection rows: not a training set
    entry: str | None
    shards_missing: list[int]  # shards the stage has not been materialized for
    shards_empty: int = 0  # shards it was materialized for that hold no row


def _asset(stage: str) -> str:
    return INSPECTION_STAGES[stage][1] if stage in INSPECTION_STAGES else STAGE_ASSETS[stage]


def load_rows(db: Database, dataset: str, stage: str, shard_count: int) -> tuple[pl.DataFrame, list[int], int]:
    """The stage's rows, the shards it has not been materialized for, and how many of the
    shards it was materialized for hold no row (a small dataset leaves shards empty)."""
    if stage in INSPECTION_STAGES:
        sql = SQL.format("inspection_rows", columns=", ".join(INSPECTION_COLUMNS[stage]),
                         view=INSPECTION_STAGES[stage][0])
    elif stage == "raw":  # raw records have no provenance column: all are 'original'
        sql = SQL.raw_rows
    else:
        sql = SQL.format("stage_rows", table=STAGES[stage])
    with db.connect() as con:
        frame = con.execute(sql, [dataset]).pl()
        written = written_shards(con, _asset(stage), dataset)
    return frame.drop("shard"), *_coverage(frame, written, shard_count)


def _coverage(frame: pl.DataFrame, written: dict[int, int], shard_count: int) -> tuple[list[int], int]:
    """The shards with no row that were never materialized, and how many materialized
    shards hold no row."""
    present = set(frame["shard"].to_list())
    missing = [s for s in range(shard_count) if s not in present and s not in written]
    return missing, sum(1 for s in written if s not in present and s < shard_count)


def _pairs_asset(stage: str) -> str:
    """The asset whose rows make a stage's pairs."""
    return "selective_dataset" if stage == "selective" else "reflected_responses"


def load_pairs(db: Database, dataset: str, stage: str, shard_count: int) -> tuple[pl.DataFrame, list[int], int]:
    """The preference pairs (record_id, variant, prompt, chosen, rejected), the shards not
    materialized yet, and how many materialized shards hold no pair; as load_rows."""
    with db.connect() as con:
        # The recycled records' pairs; for `selective`, those the student kept in that form.
        pairs_sql = SQL.selective_pairs if stage == "selective" else SQL.recycled_pairs
        frame = con.execute(pairs_sql, [dataset]).pl()
        written = written_shards(con, _pairs_asset(stage), dataset)
    missing, empty = _coverage(frame, written, shard_count)
    prompts = [user_turn(i, x) for i, x in zip(frame["instruction"].to_list(), frame["input"].to_list())]
    pairs = frame.select(
        pl.Series("prompt", prompts, dtype=pl.String), "chosen", "rejected", "record_id", "variant"
    )
    return pairs, missing, empty


def _alpaca(frame: pl.DataFrame) -> list[dict]:
    return frame.select("instruction", "input", "output").to_dicts()


def _sharegpt(frame: pl.DataFrame) -> list[dict]:
    return [
        {
            "conversations": [
                {"from": "human", "value": user_turn(row["instruction"], row["input"])},
                {"from": "gpt", "value": row["output"]},
            ]
        }
        for row in frame.iter_rows(named=True)
    ]


def _dataset_info_entry(fmt: str, file_name: str) -> dict:
    if fmt == "dpo":
        return {
            "file_name": file_name,
            "ranking": True,
            "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
        }
    if fmt == "sharegpt":
        return {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
        }
    return {
        "file_name": file_name,
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    }


def _write_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(temp))
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def export_dataset(
    db: Database, dataset: str, stage: str, fmt: str, out: Path, shard_count: int
) -> ExportResult:
    if stage not in STAGES and stage not in INSPECTION_STAGES:
        raise ExportError(f"stage {stage!r}: expected one of {', '.join([*STAGES, *INSPECTION_STAGES])}")
    formats = INSPECTION_FORMATS if stage in INSPECTION_STAGES else EXPORT_FORMATS
    if fmt not in formats:
        raise ExportError(f"format {fmt!r} for stage {stage}: expected one of {', '.join(formats)}")
    if fmt == "dpo" and stage not in DPO_STAGES:
        raise ExportError(f"format dpo for stage {stage}: preference pairs come from {' or '.join(DPO_STAGES)}")
    if fmt == "dpo":
        frame, missing, empty = load_pairs(db, dataset, stage, shard_count)
        asset = _pairs_asset(stage)
    else:
        frame, missing, empty = load_rows(db, dataset, stage, shard_count)
        asset = _asset(stage)
    if frame.is_empty() and not empty:
        raise ExportError(f"dataset {dataset!r} has no {stage} rows yet: materialize {asset} first")
    # Materialized and empty (the student kept no record, a small dataset): an empty file.

    def write(temp: Path) -> None:
        if fmt == "parquet":
            frame.write_parquet(temp)
        elif fmt in ("jsonl", "dpo"):
            frame.write_ndjson(temp)
        else:
            rows = _alpaca(frame) if fmt == "alpaca" else _sharegpt(frame)
            temp.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    _write_atomically(out, write)
    if stage in INSPECTION_STAGES:
        return ExportResult(out, frame.height, None, None, missing, empty)

    info_path = out.parent / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    entry = f"{dataset}_{stage}" + ("_dpo" if fmt == "dpo" else "")
    info[entry] = _dataset_info_entry(fmt, out.name)
    _write_atomically(info_path, lambda t: t.write_text(json.dumps(info, indent=2) + "\n"))
    return ExportResult(out, frame.height, info_path, entry, missing, empty)
