"""Every asset, job and resource of reflection-assets: what `dagster dev` and
`reflection run` load."""

from __future__ import annotations

import dagster as dg

from reflection_assets.assets.adapters import baseline_adapter, recycled_adapter, selective_adapter
from reflection_assets.assets.automation import OBSERVE_CRON
from reflection_assets.assets.benchmark import benchmark_scores
from reflection_assets.assets.oracles import judge, oracle
from reflection_assets.assets.partitions import DATASETS, RECORD_PARTITIONS
from reflection_assets.assets.raw import raw_dataset
from reflection_assets.assets.reflection import recycled_dataset, reflected_instructions, reflected_responses
from reflection_assets.assets.resources import JudgeResource, OracleResource, StorageResource
from reflection_assets.assets.selection import StudentResource, selective_dataset, student, student_scores
from reflection_assets.assets.send_ahead import send_ahead_job

# Importing these definitions changes nothing in Dagster. What remains ours of how a run
# executes is the wait for a pool slot (the `gpu` pool), which Dagster 1.13's in-process
# executor spends polling without sleep and deaf to SIGTERM / Ctrl-C: StorageResource, which
# every step of ours uses, puts our wait in place when a run starts (dagster_private.py).
# Steps run in the run's own process: every step that writes DuckDB is in the one-slot pool
# anyway, so a process per step would only add start-up time; and a run killed with SIGKILL
# then leaves no orphaned step process behind that goes on writing.
EXECUTOR = dg.in_process_executor

# Assets partitioned by dataset x shard, in graph order.
RECORD_ASSETS = [raw_dataset, reflected_instructions, reflected_responses, recycled_dataset, student_scores, selective_dataset]

recycle_shards = dg.define_asset_job(
    "recycle_shards",
    selection=dg.AssetSelection.assets(*RECORD_ASSETS),
    executor_def=EXECUTOR,
    description="The record-level stages for one dataset x shard partition: reflection (V1) and the student's selection (V2).",
)

# Assets partitioned by dataset alone: they read every shard of it.
DATASET_ASSETS = [baseline_adapter, recycled_adapter, selective_adapter, benchmark_scores]

train_and_score = dg.define_asset_job(
    "train_and_score",
    selection=dg.AssetSelection.assets(*DATASET_ASSETS),
    executor_def=EXECUTOR,
    description="The dataset-level stages (adapters, then benchmark scores) for one dataset partition.",
)

# Which job runs assets of each partitioning; `reflection run` launches through these, in
# this order: every shard first, then what reads all shards.
JOB_FOR_PARTITIONS = {RECORD_PARTITIONS: recycle_shards.name, DATASETS: train_and_score.name}

# The oracle, the judge and the scoring student: observed, never materialized.
SOURCE_ASSETS = [oracle, judge, student]

observe_oracles = dg.define_asset_job(
    "observe_oracles",
    selection=dg.AssetSelection.assets(*(source.key for source in SOURCE_ASSETS)),
    description="Observe the oracle, the judge and the student: record their fingerprints as data versions.",
)

# Nightly, the oracle and judge are observed; a changed fingerprint makes the shards they
# answered stale, and the automation sensor below requests exactly those. Both are on by
# default, so `dagster dev` runs them without a click.
observe_oracles_nightly = dg.ScheduleDefinition(
    name="observe_oracles_nightly",
    job=observe_oracles,
    cron_schedule=OBSERVE_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Observe the oracle, the judge and the student (REFLECTION_ORACLE_*, "
    "REFLECTION_JUDGE_*, REFLECTION_STUDENT_* as the code location sees them) every night at 03:00 UTC.",
)

recycle_stale = dg.AutomationConditionSensorDefinition(
    "recycle_stale",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Re-materializes the partitions an upstream change made stale (a new oracle "
    "fingerprint, a changed shard), and what is downstream of them.",
)

def code_location_resources() -> dict[str, dg.ConfigurableResource]:
    """The resources every run gets, built from the environment the code location sees:
    each variable that is set becomes a `dg.EnvVar` field, so the UI shows which variable a
    value comes from; what is unset is read when the resource is used."""
    return {
        "storage": StorageResource.from_environment(),
        "oracle": OracleResource.from_environment(),
        "judge": JudgeResource.from_environment(),
        "student": StudentResource.from_environment(),
    }


def resource(name: str) -> dg.ConfigurableResource:
    """The code location's resource `name` with the values a step gets, built from the
    environment of now: the CLI's commands read the settings the runs read, the same way,
    rather than constructing resources of their own. Its EnvVars are resolved here with
    `EnvVar.get_value`, as Dagster resolves them when a run starts, rather than through
    Dagster's resource initialisation, which makes an ephemeral Dagster instance for each
    call (0.9 s of the 2.5 s of a `reflection datasets list`) and stops on a whole number that
    does not parse with a traceback: such a field is left unset here, so the settings reader,
    which reads an unset field's variable itself, names the variable and what it expected.
    Nothing of the resource's run set-up is needed outside a run."""
    built = code_location_resources()[name]
    values = {}
    for field in type(built).model_fields:
        value = getattr(built, field)
        if hasattr(value, "get_value"):  # a dg.EnvVar, or the IntEnvVar of dg.EnvVar.int
            try:
                value = value.get_value()
            except ValueError:
                value = None
        values[field] = value
    return type(built)(**values)


defs = dg.Definitions(
    assets=[*SOURCE_ASSETS, *RECORD_ASSETS, *DATASET_ASSETS],
    jobs=[recycle_shards, train_and_score, observe_oracles, send_ahead_job],
    schedules=[observe_oracles_nightly],
    sensors=[recycle_stale],
    executor=EXECUTOR,
    resources=code_location_resources(),
)
