"""Headless materialization: what the UI would launch, run in this process against the same
Dagster instance and database. `reflection run` and the main job are built on it."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg

from reflection_assets.assets.partitions import DATASETS, SHARDS, record_partition_key
from reflection_assets.errors import UserError
from reflection_assets.headless.run_workers import launch_tags

OBSERVE_JOB = "observe_oracles"


def cli_tags() -> dict[str, str]:
    """Tags of a run executed by this process: who launched it, and the host and PID that
    `reflection recover` (and run monitoring) check to tell a killed run from a live one."""
    return {"reflection/launched_by": "cli", **launch_tags()}


class RunRequestError(UserError):
    """A `reflection run` request that names something that does not exist."""


@dataclass
class RunOutcome:
    dataset: str
    shard: str | None
    run_id: str
    success: bool
    error: str | None = None
    rows: dict[str, int | None] = field(default_factory=dict)  # asset -> dagster/row_count
    failed_checks: list[str] = field(default_factory=list)
    check_severity: dict[str, str] = field(default_factory=dict)  # check -> WARN or ERROR
    interrupted: bool = False  # stopped by SIGTERM or Ctrl-C: nothing after it was launched


def sync_dataset_partitions(instance: dg.DagsterInstance, names: Sequence[str]) -> None:
    """Registered datasets are partitions of the `dataset` dimension."""
    existing = set(instance.get_dynamic_partitions(DATASETS.name))
    missing = [n for n in names if n not in existing]
    if missing:
        instance.add_dynamic_partitions(DATASETS.name, missing)


def resolve_selection(
    defs: dg.Definitions, select: Sequence[str] | None, upstream: bool
) -> list[dg.AssetKey]:
    graph = defs.resolve_asset_graph()
    known = {key.to_user_string(): key for key in graph.materializable_asset_keys}
    if not select:
        return sorted(known.values(), key=lambda k: k.to_user_string())
    unknown = [name for name in select if name not in known]
    if unknown:
        raise RunRequestError(
            f"unknown asset(s) {', '.join(unknown)}; assets are {', '.join(sorted(known))}"
        )
    selection = dg.AssetSelection.assets(*(known[name] for name in select))
    if upstream:
        selection = selection.upstream()
    return sorted(selection.resolve(graph), key=lambda k: k.to_user_string())


def _interrupted(result: dg.ExecuteInProcessResult) -> bool:
    if result.dagster_run.status == dg.DagsterRunStatus.CANCELED:
        return True
    return any(
        event.is_step_failure
        and event.step_failure_data
        and event.step_failure_data.error
        and event.step_failure_data.error.cls_name == "DagsterExecutionInterruptedError"
        for event in result.all_events
    )


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    if result.dagster_run.status == dg.DagsterRunStatus.CANCELED:
        return "canceled: interrupted by SIGTERM or Ctrl-C"
    if _interrupted(result):
        return "interrupted by SIGTERM or Ctrl-C; the replies it received are stored"
    messages = [
        f"{event.step_key}: {_step_failure_text(event)}"
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data
    ]
    return "; ".join(messages) or "the run failed"


def _step_failure_text(event) -> str:
    """A failed step's error as the user should read it: the cause when Dagster wrapped it."""
    failure = event.step_failure_data
    if failure and failure.user_failure_data and failure.user_failure_data.description:
        return failure.user_failure_data.description.strip()  # a dg.Failure's own words
    error = failure.error if failure else None
    user_error = error.cause if error and error.cause else error
    return (user_error.message if user_error else "unknown error").strip()


def _collect(result: dg.ExecuteInProcessResult, outcome: RunOutcome) -> None:
    for event in result.all_events:
        if event.is_step_materialization:
            mat = event.step_materialization_data.materialization
            rows = mat.metadata.get("dagster/row_count")
            outcome.rows[mat.asset_key.to_user_string()] = int(rows.value) if rows is not None else None
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed:
            name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
            outcome.failed_checks.append(name)
            outcome.check_severity[name] = evaluation.severity.value


def run_record_partitions(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    job_name: str,
    keys: Sequence[dg.AssetKey],
    dataset: str,
    shards: Sequence[str] | None,
    log_level: str = "INFO",
    asset_config: Mapping[str, Mapping[str, object]] | None = None,
) -> list[RunOutcome]:
    """One run per shard of `dataset`, each materializing `keys` in graph order."""
    all_shards = SHARDS.get_partition_keys()
    wanted = list(shards) if shards else all_shards
    bad = [s for s in wanted if s not in all_shards]
    if bad:
        raise RunRequestError(
            f"unknown shard(s) {', '.join(bad)}; shards are {all_shards[0]}..{all_shards[-1]}"
        )
    partitions = [(record_partition_key(dataset, shard), dataset, shard) for shard in wanted]
    return run_partitions(instance, defs, job_name, keys, partitions, log_level, asset_config)


def run_dataset_partition(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    job_name: str,
    keys: Sequence[dg.AssetKey],
    dataset: str,
    log_level: str = "INFO",
    asset_config: Mapping[str, Mapping[str, object]] | None = None,
) -> list[RunOutcome]:
    """One run materializing the dataset-level `keys` for `dataset`."""
    return run_partitions(instance, defs, job_name, keys, [(dataset, dataset, None)], log_level, asset_config)


def observe(
    instance: dg.DagsterInstance, defs: dg.Definitions, sources: Sequence[dg.AssetKey] | None = None
) -> dict[str, dict]:
    """Observe the oracle, the judge and the student now (or only `sources` of them):
    {source: what the observation recorded}, or {source: {"error": why, ...}} for one that
    failed, with its failure's metadata (`probe_error` when the probe got no answer: its data
    version stays as it was)."""
    result = defs.resolve_job_def(OBSERVE_JOB).execute_in_process(
        instance=instance,
        asset_selection=list(sources) if sources else None,
        raise_on_error=False,
        tags=cli_tags(),
        run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
    )
    observed: dict[str, dict] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_OBSERVATION":
            observation = event.asset_observation_data.asset_observation
            observed[observation.asset_key.to_user_string()] = {k: v.value for k, v in observation.metadata.items()}
        elif event.is_step_failure and event.step_key:
            failure = event.step_failure_data.user_failure_data if event.step_failure_data else None
            metadata = {k: v.value for k, v in failure.metadata.items()} if failure else {}
            observed[event.step_key] = {"error": _step_failure_text(event), **metadata}
    return observed


def observe_sources(instance: dg.DagsterInstance, defs: dg.Definitions, keys: Sequence[dg.AssetKey]) -> None:
    """Observe the oracle and the judge before runs that call them, so each materialization's
    provenance names the oracle version it used (a stage cannot observe its own input before
    Dagster records what it read). Only the sources the selected stages read are observed: a
    recycling run probes neither the judge nor the student (loading torch for its dtype). A
    settings error is left for the run itself to report; a probe that failed is said, and the
    runs use what was last observed."""
    graph = defs.resolve_asset_graph()
    sources = sorted(
        {parent for key in keys for parent in graph.get(key).parent_keys if graph.get(parent).is_observable},
        key=lambda k: k.to_user_string(),
    )
    if sources:
        for source, facts in observe(instance, defs, sources).items():
            if "probe_error" in facts:
                print(f"reflection: observing the {source} failed: {facts['error']}", file=sys.stderr)


def run_partitions(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    job_name: str,
    keys: Sequence[dg.AssetKey],
    partitions: Sequence[tuple[str, str, str | None]],
    log_level: str,
    asset_config: Mapping[str, Mapping[str, object]] | None,
) -> list[RunOutcome]:
    """One in-process run per (partition key, dataset, shard)."""
    job = defs.resolve_job_def(job_name)
    run_config: dict[str, object] = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    if asset_config:
        known = {k.to_user_string() for k in defs.resolve_asset_graph().materializable_asset_keys}
        unknown = sorted(set(asset_config) - known)
        if unknown:
            raise RunRequestError(f"config for unknown asset(s) {', '.join(unknown)}; assets are {', '.join(sorted(known))}")
        selected = {k.to_user_string() for k in keys}
        ops = {name: {"config": dict(cfg)} for name, cfg in asset_config.items() if name in selected}
        if ops:
            run_config["ops"] = ops
    observe_sources(instance, defs, keys)
    outcomes = []
    for partition_key, dataset, shard in partitions:
        try:
            result = job.execute_in_process(
                instance=instance,
                partition_key=partition_key,
                asset_selection=list(keys),
                raise_on_error=False,
                tags=cli_tags(),
                run_config=run_config,
            )
        except dg.DagsterInvalidConfigError as exc:
            details = "; ".join(e.message for e in exc.errors) or str(exc)
            raise RunRequestError(f"invalid asset settings: {details}") from None
        outcome = RunOutcome(dataset, shard, result.run_id, result.success)
        if not result.success:
            outcome.error = _failure_message(result)
            outcome.interrupted = _interrupted(result)
        _collect(result, outcome)
        outcomes.append(outcome)
        if outcome.interrupted:
            break  # the user asked to stop: launch nothing more
    return outcomes



def send_ahead_run(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    dataset: str,
    stage: str,
    shards: Sequence[str] | None,
    stage_config: Mapping[str, object],
    log_level: str = "INFO",
) -> RunOutcome:
    """One run of the `send_ahead` job: `stage`'s requests for `shards` of `dataset` (all when
    None) sent in bulk, with the stage's `repair` and `also_original` settings."""
    from reflection_assets.assets.send_ahead import SEND_AHEAD_JOB

    config: dict[str, object] = {"dataset": dataset, "stage": stage, "shards": [int(s) for s in shards or []]}
    config.update({k: stage_config[k] for k in ("repair", "also_original") if k in stage_config})
    result = defs.resolve_job_def(SEND_AHEAD_JOB).execute_in_process(
        instance=instance,
        raise_on_error=False,
        tags=cli_tags(),
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}},
                    "ops": {"send_stage_ahead": {"config": config}}},
    )
    outcome = RunOutcome(dataset, None, result.run_id, result.success)
    if not result.success:
        outcome.error = _failure_message(result)
        outcome.interrupted = _interrupted(result)
    return outcome
