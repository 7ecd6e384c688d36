"""baseline_adapter, recycled_adapter and selective_adapter: the same student, tuned the
same way (LoRA by default), on the original, the recycled and the student-selected data of
one dataset. The step reads the rows, launches the trainer in a process of its own through
Dagster Pipes (engines/student/trainer.py, reflection_assets/train.py) and registers the result."""

import dataclasses
import typing

import dagster as dg
from pydantic import Field, create_model

from reflection_assets.assets.automation import STALE_ONLY
from reflection_assets.assets.failures import user_errors_fail_the_step
from reflection_assets.assets.metadata import png_markdown
from reflection_assets.assets.partitions import DATASETS
from reflection_assets.assets.raw import raw_dataset
from reflection_assets.assets.reflection import recycled_dataset
from reflection_assets.assets.selection import selective_dataset
from reflection_assets.assets.resources import OWNER, StorageResource, step_pool
from reflection_assets.engines.student.adapters import (
    Adapter,
    clear_current,
    has_training_rows,
    selection_scorers,
    train_or_reuse,
)
from reflection_assets.engines.models.loading import model_identity
from reflection_assets.engines.student.training import TrainConfig

ALL_SHARDS_OF_DATASET = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")
# The main job's small default: about half a minute per adapter on 2 CPU cores (8 steps of
# 4 examples, a pass over the demo's 32 records). For a real run set max_steps to null (3
# epochs, as the paper).
MAIN_JOB_MAX_STEPS = 8


class _AdapterConfigBase(dg.Config):
    def train_config(self) -> TrainConfig:
        values = self.model_dump()
        values["target_modules"] = tuple(values["target_modules"])
        return TrainConfig(**values)


def _config_field(knob: dataclasses.Field, kind: object) -> tuple[object, object]:
    default = MAIN_JOB_MAX_STEPS if knob.name == "max_steps" else knob.default
    if knob.name == "target_modules":
        kind, default = list[str], list(default)
    return (kind, Field(default=default, description=knob.metadata["doc"]))


# Every field of TrainConfig that is a knob, with its default and description: a new training
# setting is added to TrainConfig alone.
AdapterConfig = create_model(
    "AdapterConfig",
    __base__=_AdapterConfigBase,
    __module__=__name__,
    __doc__="Training settings (engines/student/training.py TrainConfig). The defaults are the main job's: "
    f"{MAIN_JOB_MAX_STEPS} steps on the embedded model; for a real run set max_steps to null.",
    **{
        knob.name: _config_field(knob, kind)
        for knob, kind in ((k, typing.get_type_hints(TrainConfig)[k.name]) for k in dataclasses.fields(TrainConfig))
        if "doc" in knob.metadata
    },
)


def _metadata(adapter: Adapter) -> dict:
    reg = adapter.registry
    metadata = {
        "adapter_id": adapter.adapter_id,
        "path": dg.MetadataValue.path(str(adapter.path)),
        "reused": adapter.reused,
        "base_model": reg["base_model"],
        "records": reg["records"],
        "data_fingerprint": reg["data_fingerprint"],
        "steps": reg["steps"],
        "tokens": reg["tokens"],
        "train_loss": reg["train_loss"],
        "eval_loss": reg["eval_loss"],
        "truncated_examples": reg["truncated"],
        "precision": reg["precision"],
        "wall_s": reg["wall_s"],
    }
    for name in ("tokens_per_s", "method", "world_size", "resumed_from_step"):
        if reg.get(name) is not None:  # adapters registered before the trainer have none
            metadata[name] = reg[name]
    plot = adapter.path / "loss.png"
    if plot.exists():
        metadata["loss_curve"] = png_markdown(plot, "loss curve")
    return metadata


def _pipes_launch(context: dg.AssetExecutionContext):
    """The trainer in a process of its own, through Dagster Pipes: its log lines reach this
    run's log as it trains; a terminated run sends it SIGINT."""

    def launch(command, env) -> None:
        dg.PipesSubprocessClient(env=dict(env)).run(context=context, command=list(command))

    return launch


def _train(context: dg.AssetExecutionContext, config: AdapterConfig, storage: StorageResource, variant: str):
    dataset = context.partition_key
    if variant == "selective" and not has_training_rows(storage.db(), dataset, variant):
        # The student kept no record: no adapter, and the benchmark compares V1 alone. A
        # failure here would also stop benchmark_scores in the same run.
        context.log.warning(f"the student selected no record of {dataset!r}: no selective adapter to train")
        clear_current(storage.db(), dataset, variant)
        return dg.MaterializeResult(
            metadata={"adapter_id": "none", "records": 0, "reason": "selective_dataset kept no record"},
            data_version=dg.DataVersion("none"),
        )
    with user_errors_fail_the_step():
        adapter = train_or_reuse(
            storage.db(), storage.artifacts_path(), dataset, variant, config.train_config(), context.log.info,
            _pipes_launch(context),
        )
    metadata = _metadata(adapter)
    if variant == "selective":
        # V2 selects with the student it trains: say so when the scores came from another model.
        trained = model_identity(config.base_model, storage.artifacts_path())
        scorers = selection_scorers(storage.db(), dataset)
        metadata["selected_by"] = ", ".join(scorers)
        if scorers != [trained]:
            context.log.warning(
                f"the records were selected by {', '.join(scorers)}, not by the model this adapter trains "
                f"({trained}): set REFLECTION_STUDENT_MODEL to the adapters' base_model"
            )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(adapter.adapter_id))


def _adapter_asset(name: str, upstream: dg.AssetsDefinition, variant: str, description: str):
    @dg.asset(
        name=name,
        partitions_def=DATASETS,
        deps=[dg.AssetDep(upstream, partition_mapping=ALL_SHARDS_OF_DATASET)],
        automation_condition=STALE_ONLY,
        pool=step_pool(runs_model=True),
        group_name="training",
        kinds={"pytorch", "duckdb"},
        owners=[OWNER],
        tags={"stage": "training", "variant": variant},
        code_version="1",
        description=description,
    )
    def adapter(context: dg.AssetExecutionContext, config: AdapterConfig, storage: StorageResource):
        return _train(context, config, storage, variant)

    return adapter


baseline_adapter = _adapter_asset(
    "baseline_adapter",
    raw_dataset,
    "baseline",
    "A LoRA adapter (or with method full, a whole model) of the student trained on the "
    "original pairs of every shard of the dataset: what the recycled adapter is compared "
    "against. Trained by transformers' Trainer in a process of its own (Dagster Pipes), "
    "resumable from its checkpoints; saved under the artifacts folder and registered in "
    "training.adapters.",
)
recycled_adapter = _adapter_asset(
    "recycled_adapter",
    recycled_dataset,
    "recycled",
    "The same recipe trained on the recycled pairs of every shard of the dataset. Saved "
    "under the artifacts folder; registered in training.adapters.",
)
selective_adapter = _adapter_asset(
    "selective_adapter",
    selective_dataset,
    "selective",
    "The same recipe trained on the student-selected pairs (V2, selective_dataset) of "
    "every shard of the dataset. Saved under the artifacts folder; registered in "
    "training.adapters.",
)
