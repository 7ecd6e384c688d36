"""Adapters as registered artifacts: which rows train which variant, an id derived from
the data and config (so unchanged inputs never retrain), training in a process of its own
into a staging folder (kept, with its checkpoints, until the result is in place: a killed
training resumes), the result renamed into place, and the registry row written last, in
one transaction. The database is read before the training and written after it, never
held in between."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from reflection_assets.engines.student import trainer
from reflection_assets.engines.store.ledger import logged
from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.store.storage import Database
from reflection_assets.engines.student.training import TrainConfig, TrainingError, check_config
from reflection_assets.method.digests import json_digest

SQL = queries("student_adapters")

# Runs the training command with these extra environment variables; raises when it fails.
Launch = Callable[[Sequence[str], Mapping[str, str]], None]

VARIANT_SOURCES = {"baseline": "raw.records", "recycled": "reflect.recycled", "selective": "selection.selective"}
# The asset whose shards fill each variant's training rows.
VARIANT_ASSETS = {"baseline": "raw_dataset", "recycled": "recycled_dataset", "selective": "selective_dataset"}


@dataclass(frozen=True)
class Adapter:
    adapter_id: str
    path: Path
    reused: bool
    registry: dict[str, object]
    train_losses: list[float]


def held_out(record_id: str, fraction: float) -> bool:
    """Whether a record belongs to the held-out slice: decided by its id alone, so the
    baseline and the recycled adapter leave out the same records."""
    return int(record_id[:8], 16) / 16**8 < fraction


def training_rows(
    db: Database, dataset: str, variant: str, holdout_fraction: float = 0.0
) -> list[tuple[str, str, str, str]]:
    with db.connect() as con:
        rows = con.execute(SQL.format("training_rows", source=VARIANT_SOURCES[variant]), [dataset]).fetchall()
    return [row for row in rows if not held_out(row[0], holdout_fraction)]


def has_training_rows(db: Database, dataset: str, variant: str) -> bool:
    """Whether the variant's source holds any row of the dataset (the held-out slice aside)."""
    with db.connect() as con:
        count = SQL.format("count_training_rows", source=VARIANT_SOURCES[variant])
        return con.execute(count, [dataset]).fetchone()[0] > 0


def set_current(con, db: Database, dataset: str, variant: str, adapter_id: str) -> None:
    """The adapter the variant's asset last materialized: what benchmark_scores evaluates.
    In the caller's transaction; the ledger has it before it commits."""
    logged(con, db.ledger(), "training.current_adapters", SQL.set_current_adapter, [dataset, variant, adapter_id])


def clear_current(db: Database, dataset: str, variant: str) -> None:
    with db.transaction() as con:
        con.execute(SQL.clear_current_adapter, [dataset, variant])
        db.ledger().delete("training.current_adapters", {"dataset": dataset, "variant": variant})


def data_fingerprint(rows: list[tuple[str, str, str, str]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def adapter_id_for(variant: str, fingerprint: str, config: TrainConfig) -> str:
    return json_digest([variant, fingerprint, config.identity()], ascii=True)


def find_adapter(db: Database, adapter_id: str) -> dict[str, object] | None:
    with db.connect() as con:
        cursor = con.execute(SQL.find_adapter, [adapter_id])
        row = cursor.fetchone()
        columns = [c[0] for c in cursor.description]
    return None if row is None else dict(zip(columns, row, strict=True))


def list_adapters(db: Database, dataset: str | None, every: bool) -> list[dict[str, object]]:
    """The registry rows of training.adapters, each with `current` (whether it is its
    variant's current adapter): of `dataset` (None: of all), the current ones only unless
    `every`. Read-only."""
    with db.connect(read_only=True) as con:
        cursor = con.execute(SQL.list_adapters, [dataset, dataset, every])
        columns = [c[0] for c in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def selection_scorers(db: Database, dataset: str) -> list[str]:
    """The students whose scores (selection.student_scores) selected the dataset's records
    for the selective adapter, by name."""
    with db.connect() as con:
        return [r[0] for r in con.execute(SQL.selection_scorers, [dataset]).fetchall()]


def plot_losses(losses: list[float], eval_loss: float | None, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(range(1, len(losses) + 1), losses, label="train loss (per step)")
    if eval_loss is not None:
        ax.axhline(eval_loss, color="tab:orange", linestyle="--", label=f"held-out loss {eval_loss:.3f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean token loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_process(command: Sequence[str], env: Mapping[str, str]) -> None:
    """The launch outside Dagster: the trainer as a plain child process, its output on ours."""
    code = subprocess.run(list(command), env={**os.environ, **env}, check=False).returncode
    if code != 0:
        raise RuntimeError(f"{command[0]} … exited with status {code}")


def _launch(staging: Path, config: TrainConfig, launch: Launch, log: Callable[[str], None]) -> dict[str, object]:
    """Train in the staging folder unless a finished result waits there (a run that trained
    and then failed to register), and return the trainer's result."""
    from reflection_assets.train import PARENT_ENV, parent_token

    result_file, model = staging / trainer.RESULT, staging / trainer.MODEL
    if result_file.exists() and model.is_dir():
        log(f"the training in {staging} had finished: registering its result")
        return json.loads(result_file.read_text())
    command = trainer.launch_command(config, staging / trainer.SPEC)
    log("launching the trainer: " + " ".join(command[1:]))
    try:
        launch(command, {PARENT_ENV: parent_token(), "PYTHONUNBUFFERED": "1"})
    except Exception as exc:
        error = staging / trainer.ERROR
        if error.exists():
            raise TrainingError(error.read_text()) from None
        kept = trainer.last_checkpoint(staging)
        raise TrainingError(
            f"the training process failed ({exc}; its own output above says why). "
            + (f"Its checkpoint {kept.name} is kept in {staging}: materializing again resumes from it"
               if kept else f"No checkpoint was written yet (save_steps={config.save_steps})")
        ) from None
    if not result_file.exists():
        raise TrainingError(f"the training process ended without a result in {staging}")
    return json.loads(result_file.read_text())


def train_or_reuse(
    db: Database,
    artifacts: str | Path,
    dataset: str,
    variant: str,
    config: TrainConfig,
    log: Callable[[str], None] = print,
    launch: Launch = run_process,
) -> Adapter:
    if not 0 <= config.holdout_fraction < 1:
        raise TrainingError(f"holdout_fraction={config.holdout_fraction}: expected at least 0 and below 1")
    check_config(config)
    rows = training_rows(db, dataset, variant, config.holdout_fraction)
    if not rows:
        raise TrainingError(
            f"no training rows for {dataset!r} ({variant}): materialize {VARIANT_ASSETS[variant]} for its shards first"
            + (" (or no record was selected: see selective_dataset's kept_by_kind)" if variant == "selective" else "")
        )
    fingerprint = data_fingerprint(rows)
    adapter_id = adapter_id_for(variant, fingerprint, config)
    out = Path(artifacts) / "adapters" / dataset / variant / adapter_id
    existing = find_adapter(db, adapter_id)
    if existing is not None and Path(str(existing["path"])).exists():
        log(f"adapter {adapter_id} already trained on these {len(rows)} rows with this config: reused")
        log_file = out / "training_log.json"
        losses = json.loads(log_file.read_text())["train_losses"] if log_file.exists() else []
        with db.transaction() as con:
            set_current(con, db, dataset, variant, adapter_id)
        return Adapter(adapter_id, out, True, existing, losses)

    # The same id means the same rows and settings: a staging folder left by a killed
    # training of this adapter is resumed, not replaced.
    staging = out.with_name(f".{adapter_id}.partial")
    finished = out / "training_log.json"
    previous = json.loads(finished.read_text()) if finished.exists() else {}
    if "steps" in previous:  # trained and moved into place, but never registered
        log(f"adapter {adapter_id} was trained but not registered: registering it")
        result = previous
    else:
        staging.mkdir(parents=True, exist_ok=True)
        trainer.write_rows(staging / trainer.ROWS, rows)
        trainer.TrainSpec(config.as_dict(), str(Path(artifacts).resolve()), f"{dataset} / {variant}").save(staging)
        result = _launch(staging, config, launch, log)
        model = staging / trainer.MODEL
        plot_losses(result["train_losses"], result["eval_loss"], f"{dataset} / {variant}", model / "loss.png")
        if (staging / trainer.PROGRESS).exists():  # every attempt's steps, resumed ones included
            shutil.copy2(staging / trainer.PROGRESS, model / trainer.PROGRESS)
        (model / "training_log.json").write_text(json.dumps({**result, "config": config.as_dict()}))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(model, out)
    losses = result["train_losses"]
    tail = losses[-max(1, len(losses) // 10) :] or [float("nan")]
    registry = {
        "adapter_id": adapter_id,
        "dataset": dataset,
        "variant": variant,
        "path": str(out),
        "base_model": config.base_model,
        "data_fingerprint": fingerprint,
        "records": len(rows),
        "config_json": json.dumps(config.as_dict(), sort_keys=True),
        "steps": result["steps"],
        "tokens": result["tokens"],
        "train_loss": sum(tail) / len(tail),
        "eval_loss": result["eval_loss"],
        "truncated": result["truncated"],
        "precision": result["precision"],
        "wall_s": result["wall_s"],
        "method": result["method"],
        "world_size": result["world_size"],
        "resumed_from_step": result["resumed_from_step"],
        "tokens_per_s": result["tokens_per_s"],
    }
    # read by DuckDB by its name in the INSERT below
    record_ids = pl.DataFrame({"adapter_id": [adapter_id] * len(rows), "record_id": [r[0] for r in rows]})
    ledger = db.ledger()
    with db.transaction() as con:  # the ledger has every row before it commits
        con.execute(SQL.delete_adapter, [adapter_id])
        con.execute(SQL.delete_adapter_records, [adapter_id])
        ledger.delete("training.adapter_records", {"adapter_id": adapter_id}, sync=False)
        insert = SQL.format("insert_adapter", columns=", ".join(registry), params=", ".join("?" * len(registry)))
        logged(con, ledger, "training.adapters", insert, list(registry.values()))
        con.execute(SQL.insert_adapter_records)
        ledger.put("training.adapter_records", record_ids.to_dicts(), sync=False)
        set_current(con, db, dataset, variant, adapter_id)
    shutil.rmtree(staging, ignore_errors=True)  # its checkpoints are no longer needed
    return Adapter(adapter_id, out, False, registry, losses)
