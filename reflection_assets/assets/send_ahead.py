"""Sending a reflection stage's oracle requests ahead for many shards at once, as a Dagster
run of its own: the `send_ahead` job, which `reflection run` launches before a stage's
shard runs when the oracle answers better in bulk (the embedded model generates in full
batches across shards; batch mode waits once per wave for the whole dataset instead of once
per shard). The shard runs then find every reply in the cache.

It runs with the run's resources (the oracle's mode and backend are the definitions'
`oracle` resource, not whatever the environment of the caller says), in the `gpu` pool when
the oracle is in process, and its progress is in the run's log: no oracle call of
`reflection run` is made outside a Dagster run."""

import dagster as dg

from reflection_assets.assets.failures import user_errors_fail_the_step
from reflection_assets.assets.oracles import served_identity_for
from reflection_assets.assets.partitions import SHARDS
from reflection_assets.assets.resources import OracleResource, StorageResource, oracle_pool
from reflection_assets.engines.planning.batch_files import EXPORT_STAGES, send_ahead
from reflection_assets.engines.oracle.batch import BatchScope
from reflection_assets.engines.reflection.phases import repair_calls

SEND_AHEAD_JOB = "send_ahead"


class SendAheadConfig(dg.Config):
    dataset: str
    stage: str  # one of EXPORT_STAGES: reflected_instructions, reflected_responses
    shards: list[int] = []  # empty: every shard
    repair: str = "auto"  # as the stage's own setting
    also_original: bool = True  # reflected_responses: the original pairs too


@dg.op(name="send_stage_ahead", pool=oracle_pool(), tags={"stage": "reflection"})
def send_ahead_op(context: dg.OpExecutionContext, config: SendAheadConfig, oracle: OracleResource,
                  storage: StorageResource) -> None:
    """What a reflection stage will ask the oracle for the given shards of a dataset, sent in
    bulk and stored in the reply cache."""
    with user_errors_fail_the_step():
        if config.stage not in EXPORT_STAGES:
            raise dg.Failure(description=f"stage {config.stage!r}: expected one of {', '.join(EXPORT_STAGES)}")
        settings = oracle.settings()
        served = served_identity_for(context.instance, "oracle", settings)
        repair = repair_calls(config.repair, settings.kind.repair_default)
        shards = list(config.shards) or [int(s) for s in SHARDS.get_partition_keys()]
        how = "batch mode" if settings.mode == "batch" else "embedded oracle"
        scope = BatchScope("oracle", config.dataset, config.stage, None)

        def make_client(cls):
            return oracle.client(storage, context.log, served, scope, client_class=cls)

        asked = send_ahead(make_client, storage.db(), config.dataset, shards, config.stage, repair, config.also_original)
        context.log.info(f"{how}: {asked} requests of {config.stage} for {len(shards)} shard(s) of {config.dataset} "
                         "answered ahead")


@dg.job(name=SEND_AHEAD_JOB, executor_def=dg.in_process_executor,
        description="Send a reflection stage's oracle requests ahead for many shards of a dataset at once "
        "(embedded oracle, batch mode): what `reflection run` launches before the stage's shard runs.")
def send_ahead_job() -> None:
    send_ahead_op()
