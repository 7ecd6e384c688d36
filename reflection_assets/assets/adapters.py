"""baseline_adapter and recycled_adapter: the same student, LoRA-tuned the same way, on the
original and on the recycled data of one dataset."""

from typing import Optional

import dagster as dg

from reflection_assets.assets.automation import STALE_ONLY
from reflection_assets.assets.failures import user_errors_fail_the_step
from reflection_assets.assets.metadata import png_markdown
from reflection_assets.assets.partitions import DATASETS
from reflection_assets.assets.raw import raw_dataset
from reflection_assets.assets.reflection import recycled_dataset
from reflection_assets.assets.resources import DUCKDB_POOL, OWNER, StorageResource
from reflection_assets.engines.adapters import Adapter, train_or_reuse
from reflection_assets.engines.student import TrainConfig

ALL_SHARDS_OF_DATASET = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")
D = TrainConfig  # defaults live in one place: the engine's TrainConfig


class AdapterConfig(dg.Config):
    """LoRA settings. The defaults are the main job's: a small number of steps on the
    embedded model. For a real run set max_steps to null (3 epochs, as the paper)."""

    base_model: str = D.base_model
    template: str = D.template
    lora_rank: int = D.lora_rank
    lora_alpha: int = D.lora_alpha
    lora_dropout: float = D.lora_dropout
    target_modules: list[str] = list(D.target_modules)
    learning_rate: float = D.learning_rate
    warmup_ratio: float = D.warmup_ratio
    weight_decay: float = D.weight_decay
    epochs: float = D.epochs
    max_steps: Optional[int] = 24
    batch_size: int = D.batch_size
    grad_accumulation: int = D.grad_accumulation
    max_length: int = D.max_length
    eval_fraction: float = D.eval_fraction
    holdout_fraction: float = D.holdout_fraction
    seed: int = D.seed
    precision: str = D.precision

    def train_config(self) -> TrainConfig:
        values = self.model_dump()
        values["target_modules"] = tuple(values["target_modules"])
        return TrainConfig(**values)


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
    if "tokens_per_s" in reg:
        metadata["tokens_per_s"] = reg["tokens_per_s"]
    plot = adapter.path / "loss.png"
    if plot.exists():
        metadata["loss_curve"] = png_markdown(plot, "loss curve")
    return metadata


def _train(context: dg.AssetExecutionContext, config: AdapterConfig, storage: StorageResource, variant: str):
    dataset = context.partition_key
    with user_errors_fail_the_step():
        adapter = train_or_reuse(
            storage.db(), storage.artifacts_path(), dataset, variant, config.train_config(), context.log.info
        )
    return dg.MaterializeResult(metadata=_metadata(adapter), data_version=dg.DataVersion(adapter.adapter_id))


def _adapter_asset(name: str, upstream: dg.AssetsDefinition, variant: str, description: str):
    @dg.asset(
        name=name,
        partitions_def=DATASETS,
        deps=[dg.AssetDep(upstream, partition_mapping=ALL_SHARDS_OF_DATASET)],
        automation_condition=STALE_ONLY,
        pool=DUCKDB_POOL,
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
    "A LoRA adapter of the student trained on the original pairs of every shard of the "
    "dataset: what the recycled adapter is compared against. Saved in peft's format under "
    "the artifacts folder; registered in training.adapters.",
)
recycled_adapter = _adapter_asset(
    "recycled_adapter",
    recycled_dataset,
    "recycled",
    "The same LoRA recipe trained on the recycled pairs of every shard of the dataset. "
    "Saved in peft's format under the artifacts folder; registered in training.adapters.",
)
