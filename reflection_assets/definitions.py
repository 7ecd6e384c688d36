"""Every asset, job and resource of reflection-assets: what `dagster dev` and
`reflection run` load."""

from __future__ import annotations

import dagster as dg

from reflection_assets.assets.adapters import baseline_adapter, recycled_adapter
from reflection_assets.assets.benchmark import benchmark_scores
from reflection_assets.assets.partitions import DATASETS, RECORD_PARTITIONS
from reflection_assets.assets.raw import raw_dataset
from reflection_assets.assets.reflection import recycled_dataset, reflected_instructions, reflected_responses
from reflection_assets.assets.resources import JudgeResource, OracleResource, StorageResource

# Assets partitioned by dataset x shard, in graph order.
RECORD_ASSETS = [raw_dataset, reflected_instructions, reflected_responses, recycled_dataset]

recycle_shards = dg.define_asset_job(
    "recycle_shards",
    selection=dg.AssetSelection.assets(*RECORD_ASSETS),
    description="The record-level stages for one dataset x shard partition.",
)

# Assets partitioned by dataset alone: they read every shard of it.
DATASET_ASSETS = [baseline_adapter, recycled_adapter, benchmark_scores]

train_and_score = dg.define_asset_job(
    "train_and_score",
    selection=dg.AssetSelection.assets(*DATASET_ASSETS),
    description="The dataset-level stages (adapters, then benchmark scores) for one dataset partition.",
)

# Which job runs assets of each partitioning; `reflection run` launches through these, in
# this order: every shard first, then what reads all shards.
JOB_FOR_PARTITIONS = {RECORD_PARTITIONS: recycle_shards.name, DATASETS: train_and_score.name}

defs = dg.Definitions(
    assets=[*RECORD_ASSETS, *DATASET_ASSETS],
    jobs=[recycle_shards, train_and_score],
    resources={"storage": StorageResource(), "oracle": OracleResource(), "judge": JudgeResource()},
)
