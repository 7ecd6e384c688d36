"""`reflection run`, `status`, `recover`, `observe` and `instance`: materializing headless,
and the state of the instance: what is stale, what crashed, where state lives."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from reflection_assets.cli.common import storage_resource
from reflection_assets.cli.inspection import print_scores
from reflection_assets.engines.data.datasets import DatasetError
from reflection_assets.errors import SettingsError


def cmd_status(args: argparse.Namespace) -> int:
    from reflection_assets.dagster_instance import ensure_instance
    from reflection_assets.definitions import DATASET_ASSETS, RECORD_ASSETS, defs
    from reflection_assets.engines.data.lineage import oracle_spend
    from reflection_assets.engines.data.shards import UPSTREAM, written_shards
    from reflection_assets.headless.status import asset_statuses, render, unobserved_changes

    by_shard = ("raw_dataset", *UPSTREAM)  # the stages that record the shards they wrote

    storage = storage_resource()
    registry = storage.registry()
    specs = [registry.get(args.dataset)] if args.dataset else registry.list()
    if not specs:
        print("no datasets registered; add one with `reflection datasets add NAME SOURCE`")
        return 0
    instance = ensure_instance()
    keys = [a.key for a in (*RECORD_ASSETS, *DATASET_ASSETS)]
    for number, spec in enumerate(specs):
        statuses = asset_statuses(instance, defs, spec.name, keys)
        changes = unobserved_changes(instance, statuses)
        with storage.db().connect() as con:
            written = {s.asset: written_shards(con, s.asset, spec.name) for s in statuses if s.asset in by_shard}
        absent = {s.asset: [label for label in s.done if int(label) not in written[s.asset]]
                  for s in statuses if s.asset in written}
        print(("\n" if number else "") + "\n".join(render(spec.name, statuses, oracle_spend(storage.db(), spec.name), changes, absent)))
    from reflection_assets.engines.oracle.batch_store import LIVE, BatchStore

    live = [r for r in BatchStore(storage.db()).listed(args.dataset) if r.kind == "api" and r.status in LIVE]
    if live:
        waiting = sum(r.requests - r.completed - r.failed for r in live)
        print(f"\n{len(live)} batch(es) in flight, {waiting:,} requests not answered yet (`reflection batch list`); "
              "the next materialization of their stages re-attaches to them")
    from reflection_assets.headless.run_workers import dead_runs

    dead = dead_runs(instance)
    if dead:
        print("\nruns whose process is gone (`reflection recover` marks them failed and frees their pool slots):")
        for entry in dead:
            print(f"  {_describe_run(entry.run)}: {entry.message}")
    return 0


def _print_summary(outcomes) -> None:
    by_asset: dict[str, list[int | None]] = defaultdict(list)
    for outcome in outcomes:
        for asset, rows in outcome.rows.items():
            by_asset[asset].append(rows)
    ok = sum(o.success for o in outcomes)
    print(f"\n{ok} of {len(outcomes)} runs succeeded")
    for asset, counts in by_asset.items():
        rows = [c for c in counts if c is not None]
        print(f"  {asset}: " + (f"{sum(rows)} rows in " if rows else "materialized in ") + f"{len(counts)} partition(s)")
    failed_checks: dict[str, list[str]] = defaultdict(list)
    severity: dict[str, str] = {}
    for outcome in outcomes:
        where = f"{outcome.dataset}|{outcome.shard}" if outcome.shard else outcome.dataset
        if not outcome.success:
            state = "STOPPED" if outcome.interrupted else "FAILED"
            print(f"  {state} {where} (run {outcome.run_id}): {outcome.error}")
        for check in outcome.failed_checks:
            failed_checks[check].append(where)
            severity[check] = outcome.check_severity.get(check, "ERROR")
    for check, places in failed_checks.items():
        listed = ", ".join(places[:4]) + (f" and {len(places) - 4} more" if len(places) > 4 else "")
        print(f"  check failed ({severity[check]}) {check} on {len(places)} partition(s): {listed}")


def _load_asset_config(path: str) -> dict:
    """A YAML (or JSON) file: {asset name: {setting: value}}, as in the UI's launchpad."""
    from pathlib import Path

    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise SettingsError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise SettingsError(f"{path}: expected a mapping of asset name to its settings")
    return data


def _describe_run(run) -> str:
    partition = run.tags.get("dagster/partition")
    return f"run {run.run_id[:8]} ({run.job_name}" + (f", {partition}" if partition else "") + ")"


def _recover(instance, quiet_when_nothing: bool) -> None:
    """Fail the runs whose process died and give back the pool slots of finished runs."""
    from reflection_assets.headless.run_workers import recover

    recovery = recover(instance)
    for dead in recovery.failed:
        print(f"recovered {_describe_run(dead.run)}: {dead.message}; marked failed", file=sys.stderr)
    for run_id, slots in sorted(recovery.freed.items()):
        print(f"freed {slots} pool slot(s) held by finished run {run_id[:8]}", file=sys.stderr)
    if not recovery.failed and not recovery.freed and not quiet_when_nothing:
        print("nothing to recover: no run in progress has lost its process, no finished run holds a pool slot")


def cmd_observe(args: argparse.Namespace) -> int:
    from reflection_assets.dagster_instance import ensure_instance
    from reflection_assets.definitions import defs
    from reflection_assets.method.served import ServedIdentity
    from reflection_assets.headless.runner import observe

    failed = False
    for key, facts in sorted(observe(ensure_instance(), defs).items()):
        if "error" in facts:
            failed = True
            print(f"{key:<8} observation failed: {facts['error']}")
            continue
        if "backend" in facts:  # the oracle and the judge
            what = f"{facts['backend']} {facts['model']} ({facts['prompt_version']})"
            if facts.get("served_identity"):
                served = ServedIdentity.from_metadata(facts)
                what += f"; served by {served.describe() if served else facts['served_model']}"
            else:
                what += "; probe off"
            print(f"{key:<8} version {facts['data_version']}  fingerprint {facts['fingerprint']}  {what}")
        else:  # the scoring student
            what = f"{facts['model']}, template {facts['template']}, max_length {facts['max_length']}, {facts['dtype']}"
            print(f"{key:<8} fingerprint {facts['fingerprint']}  {what}")
    return 1 if failed else 0


def cmd_instance(args: argparse.Namespace) -> int:
    from reflection_assets.dagster_instance import ensure_instance

    instance = ensure_instance()
    storage = storage_resource()
    where = "PostgreSQL (DAGSTER_PG_URL)" if "postgres" in type(instance.run_storage).__name__.lower() else "SQLite files there"
    print(f"Dagster instance  {instance.root_directory}: runs, event logs and schedules in {where}")
    print(f"DuckDB database   {storage.database_path()}")
    print(f"model artifacts   {storage.artifacts_path()}")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from reflection_assets.dagster_instance import ensure_instance

    _recover(ensure_instance(), quiet_when_nothing=False)
    return 0


def _sends_ahead(settings) -> bool:
    """Whether a reflection stage's requests for every shard go to the oracle together,
    before its shards are materialized: in batch mode (one batch per wave for the whole
    dataset), and with the embedded model, whose throughput grows with its generation batch
    (measured in benchmarks/local_batch.py: 1.4x from batch 8 to 16, 1.6x to 32) while one
    shard of a small dataset holds a few records. An endpoint serves shards one after the
    other at its own concurrency."""
    return settings.mode == "batch" or settings.kind.sends_ahead


def _oracle_settings():
    """The oracle's settings as the definitions' resource gives them to the runs."""
    from reflection_assets.definitions import resource

    return resource("oracle").settings()


def _record_groups(record_keys, settings, per_shard: bool = False):
    """The record-level assets as `reflection run` materializes them: all of them per shard,
    in one run each; when the oracle's requests are sent ahead (_sends_ahead), level by
    level, each reflection stage after what it reads, its oracle requests for the whole
    dataset sent ahead first by a `send_ahead` run (the stage it opens is the second element).
    `settings` are the oracle's, as the runs will see them (_oracle_settings)."""
    from reflection_assets.definitions import RECORD_ASSETS
    from reflection_assets.engines.planning.batch_files import EXPORT_STAGES

    if not record_keys:
        return []
    if per_shard or not _sends_ahead(settings):
        return [(record_keys, None)]
    groups: list[tuple[list, str | None]] = [([], None)]
    for asset in RECORD_ASSETS:
        if asset.key not in record_keys:
            continue
        name = asset.key.to_user_string()
        if name in EXPORT_STAGES:
            groups.append(([], name))
        groups[-1][0].append(asset.key)
    return [(keys, stage) for keys, stage in groups if keys]


def _stderr_log(name: str, level: int):
    """The oracle client's log lines, bare, on stderr: outside a Dagster run nothing else
    shows them."""
    import logging

    log = logging.getLogger(name)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level)
    return log


def cmd_run(args: argparse.Namespace) -> int:
    from reflection_assets.assets.partitions import DATASETS, RECORD_PARTITIONS, SHARD_COUNT
    from reflection_assets.dagster_instance import ensure_instance
    from reflection_assets.definitions import JOB_FOR_PARTITIONS, defs
    from reflection_assets.headless.runner import (
        resolve_selection,
        run_dataset_partition,
        run_record_partitions,
        send_ahead_run,
        sync_dataset_partitions,
    )

    registry = storage_resource().registry()
    specs = [registry.get(args.dataset)] if args.dataset else registry.list()
    if not specs:
        raise DatasetError("no datasets registered; add one with `reflection datasets add NAME SOURCE`")
    instance = ensure_instance()
    _recover(instance, quiet_when_nothing=True)  # a killed run must not hold the pool forever
    sync_dataset_partitions(instance, [s.name for s in specs])
    select = [name.strip() for name in args.select.split(",")] if args.select else None
    asset_config = _load_asset_config(args.config) if args.config else None
    keys = resolve_selection(defs, select, args.upstream)
    record_keys = [k for k in keys if defs.resolve_assets_def(k).partitions_def == RECORD_PARTITIONS]
    dataset_keys = [k for k in keys if defs.resolve_assets_def(k).partitions_def == DATASETS]
    outcomes = []
    stopped = None
    interrupted = False  # a send_ahead run stopped by SIGTERM or Ctrl-C
    settings = _oracle_settings() if record_keys else None
    groups = _record_groups(record_keys, settings, args.per_shard) if record_keys else []
    for spec in specs:
        for group, stage in groups:
            if stage is not None:
                how = "batch mode" if settings.mode == "batch" else "embedded oracle"
                count = len(args.shard) if args.shard else SHARD_COUNT
                print(f"{how}: sending ahead what {stage} needs for {count} shard(s) of {spec.name}"
                      + (", in batches across shards" if settings.kind.sends_ahead else "")
                      + " (a run of the send_ahead job)", file=sys.stderr)
                ahead = send_ahead_run(instance, defs, spec.name, stage, args.shard, (asset_config or {}).get(stage, {}),
                                       args.log_level)
                if ahead.interrupted:
                    interrupted = True
                    break
                if not ahead.success:
                    stopped = f"{ahead.error} (run {ahead.run_id[:8]})"
                    break
            outcomes += run_record_partitions(
                instance,
                defs,
                JOB_FOR_PARTITIONS[RECORD_PARTITIONS],
                group,
                spec.name,
                args.shard,
                args.log_level,
                asset_config,
            )
            if not all(o.success for o in outcomes):
                break
        if stopped or interrupted:
            break
        if dataset_keys and not args.shard and all(o.success for o in outcomes):
            outcomes += run_dataset_partition(
                instance, defs, JOB_FOR_PARTITIONS[DATASETS], dataset_keys, spec.name, args.log_level, asset_config
            )
        if any(o.interrupted for o in outcomes):
            break
    _print_summary(outcomes)
    from reflection_assets.engines.data.lineage import recycling_summary

    for spec in specs:
        for line in recycling_summary(storage_resource().db(), spec.name):
            print(line)
    if interrupted or any(o.interrupted for o in outcomes):
        print("reflection: interrupted; nothing more was launched", file=sys.stderr)
        return 130
    if stopped:
        print(f"reflection: {stopped}", file=sys.stderr)
        return 1
    if any(k.to_user_string() == "benchmark_scores" for k in dataset_keys):
        print_scores([o.dataset for o in outcomes if o.success and o.shard is None])
    return 0 if all(o.success for o in outcomes) else 1


def cmd_estimate(args: argparse.Namespace) -> int:
    import json
    import logging

    from reflection_assets.assets.benchmark import BenchmarkConfig
    from reflection_assets.assets.oracles import served_identity_for
    from reflection_assets.assets.reflection import ReflectionConfig, ResponseReflectionConfig
    from reflection_assets.dagster_instance import ensure_instance
    from reflection_assets.definitions import resource
    from reflection_assets.engines.planning.estimate import (
        ESTIMATE_STAGES,
        JUDGE_STAGE,
        JudgePlan,
        Role,
        StageConfig,
        check_request,
        dataset_pairs,
        estimate,
        price_of,
    )
    from reflection_assets.engines.oracle.batch import BatchScope
    from reflection_assets.engines.reflection.phases import repair_calls
    from reflection_assets.engines.benchmark.testsets import TestsetRegistry

    storage = storage_resource()
    storage.registry().get(args.dataset)  # an unknown name says so
    stages = [s for s in (*ESTIMATE_STAGES, JUDGE_STAGE) if s in (args.stage or ESTIMATE_STAGES)]
    config = _load_asset_config(args.config) if args.config else {}
    db = storage.db()
    pairs = dataset_pairs(db, args.dataset)
    check_request(args.dataset, len(pairs), stages, args.pilot)
    log = _stderr_log("reflection.oracle.estimate", logging.INFO if args.pilot else logging.WARNING)

    def settings_of(model, name: str):
        """An asset's settings from --config, checked as the launchpad checks them."""
        given = config.get(name, {})
        unknown = sorted(set(given) - set(model.model_fields))
        if unknown:
            raise SettingsError(f"{args.config}: {name}: no setting {unknown[0]!r}; expected one of "
                                + ", ".join(model.model_fields))
        try:
            return model(**given)
        except Exception as exc:  # pydantic's validation error, whose text names the field
            raise SettingsError(f"{args.config}: {name}: {exc}") from None

    phase1 = settings_of(ReflectionConfig, "reflected_instructions")
    phase2 = settings_of(ResponseReflectionConfig, "reflected_responses")
    bench = settings_of(BenchmarkConfig, JUDGE_STAGE)
    resources = {name: resource(name) for name in ("oracle", "judge")}
    asked = {"oracle": bool(set(stages) & set(ESTIMATE_STAGES)), "judge": JUDGE_STAGE in stages}
    settings = {name: resource.settings() for name, resource in resources.items()}
    for name, prefix in (("oracle", "REFLECTION_ORACLE_"), ("judge", "REFLECTION_JUDGE_")):
        if asked[name]:
            price_of(settings[name], prefix)  # an unknown price fails before the probe sends anything

    def role(name: str) -> Role:
        if not asked[name]:
            return Role(settings[name], None)
        served = served_identity_for(ensure_instance(), name, settings[name])

        def make_client(cls):
            scope = BatchScope(name, args.dataset, "estimate", None)
            return resources[name].client(storage, log, served, scope, client_class=cls)

        return Role(settings[name], make_client)

    repair_default = settings["oracle"].kind.repair_default
    stage_config = StageConfig(
        repair_instructions=repair_calls(phase1.repair, repair_default),
        repair_responses=repair_calls(phase2.repair, repair_default),
        also_original=phase2.also_original,
    )
    plan = None
    if asked["judge"]:
        registry = TestsetRegistry(db)
        cut = bench.max_prompts
        testsets = {name: registry.load(name)[:cut] if cut else registry.load(name) for name in bench.testsets}
        plan = JudgePlan(testsets, bench.max_new_tokens, bench.compare_base)
    oracle, judge = role("oracle"), role("judge")
    result = estimate(
        db, storage.artifacts_path(), args.dataset, pairs, stages, stage_config, oracle, judge, plan,
        pilot=args.pilot, log=lambda line: print(line, file=sys.stderr),
    )
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
        return 0
    for line in render_estimate(result):
        print(line)
    return 0


def render_estimate(result) -> list[str]:
    def usd(value: float) -> str:
        return f"${value:,.4f}" if value < 10 else f"${value:,.2f}"

    lines = [f"estimate for {result.dataset} ({result.records:,} records), oracle {result.model}, {result.mode} mode"]
    if result.pilot_records:
        lines.append(f"pilot: {result.pilot_records} record(s) sent, {result.pilot_requests} request(s), "
                     f"{usd(result.pilot_cost_usd)} (cached: the stages will not pay them again)")
    for s in result.stages:
        hours = "unknown" if s.hours is None else f"{s.hours:.2f} h" if s.hours >= 1 else f"{s.hours * 60:.1f} min"
        lines += [
            f"{s.stage}:",
            f"  requests     {s.requests:,} still to send (range {s.requests_range[0]:,} to {s.requests_range[1]:,}; "
            f"{s.known:,} with known prompts, {s.cached:,} already cached)",
            f"  input        {s.input_tokens:,} tokens, {s.input_basis}",
            f"  output       {s.output_tokens:,} tokens (range {s.output_tokens_range[0]:,} to {s.output_tokens_range[1]:,}), "
            f"{s.output_basis}",
            f"  cost         {usd(s.cost_usd)} online (range {usd(s.cost_usd_range[0])} to {usd(s.cost_usd_range[1])}), "
            f"{usd(s.batch_cost_usd)} in batch mode",
            f"  time         {hours} at the pace this oracle was seen at",
        ]
    lines.append(f"total: {usd(result.total_cost_usd)} ({result.mode} price)")
    lines += [f"note: {note}" for note in result.notes]
    return lines
