"""Partitions: record-level assets by dataset x shard, model-level assets by dataset."""

from __future__ import annotations

import dagster as dg

from reflection_assets.engines.settings import shard_count
from reflection_assets.method.records import shard_keys

SHARD_COUNT = shard_count()

# Registering a dataset adds its name here (`reflection datasets add`).
DATASETS = dg.DynamicPartitionsDefinition(name="dataset")
SHARDS = dg.StaticPartitionsDefinition(shard_keys(SHARD_COUNT))
RECORD_PARTITIONS = dg.MultiPartitionsDefinition({"dataset": DATASETS, "shard": SHARDS})


def dataset_and_shard(context: dg.AssetExecutionContext) -> tuple[str, int]:
    keys = context.partition_key.keys_by_dimension  # type: ignore[union-attr]
    return keys["dataset"], int(keys["shard"])


def record_partition_key(dataset: str, shard: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"dataset": dataset, "shard": shard})
