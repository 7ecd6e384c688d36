"""The `reflection` command: register datasets and materialize assets headless."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from reflection_assets.engines.datasets import DatasetError, parse_field_map
from reflection_assets.engines.export import EXPORT_FORMATS, INSPECTION_STAGES, STAGES
from reflection_assets.engines.sources import FORMATS
from reflection_assets.engines.testsets import FORMATS as TESTSET_FORMATS
from reflection_assets.errors import SettingsError, UserError


def _storage():
    from reflection_assets.assets.resources import StorageResource

    return StorageResource()


def cmd_datasets_add(args: argparse.Namespace) -> int:
    from reflection_assets.dagster_instance import ensure_instance
    from reflection_assets.runner import sync_dataset_partitions

    registry = _storage().registry()
    spec = registry.add(
        args.name, args.source, args.format, parse_field_map(args.field or []), args.replace
    )
    sync_dataset_partitions(ensure_instance(), [spec.name])
    print(f"dataset {spec.name}: {spec.source}" + (f" ({spec.format})" if spec.format else ""))
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    specs = _storage().registry().list()
    if not specs:
        print("no datasets registered; add one with `reflection datasets add NAME SOURCE`")
        return 0
    width = max(len(s.name) for s in specs)
    for spec in specs:
        extra = f"  format={spec.format}" if spec.format else ""
        extra += f"  fields={spec.field_map}" if spec.field_map else ""
        print(f"{spec.name:<{width}}  {spec.source}{extra}")
    return 0


def cmd_testsets_add(args: argparse.Namespace) -> int:
    from reflection_assets.engines.testsets import TestsetRegistry

    spec, count = TestsetRegistry(_storage().db()).add(args.name, args.source, args.format)
    print(f"test set {spec.name}: {count} prompts from {spec.source}" + (f" ({spec.format})" if spec.format else ""))
    return 0


def cmd_testsets_list(args: argparse.Namespace) -> int:
    from reflection_assets.engines.testsets import TestsetRegistry

    specs = TestsetRegistry(_storage().db()).list()
    width = max(len(s.name) for s in specs)
    for spec in specs:
        print(f"{spec.name:<{width}}  {spec.source}" + (f"  format={spec.format}" if spec.format else ""))
    return 0


def _print_scores(names: list[str]) -> bool:
    from reflection_assets.engines.benchmark import latest_report

    db = _storage().db()
    printed = False
    for name in names:
        lines = latest_report(db, name)
        if lines:
            print("\n" + "\n".join(lines))
            printed = True
    return printed


def cmd_scores(args: argparse.Namespace) -> int:
    names = [args.dataset] if args.dataset else [s.name for s in _storage().registry().list()]
    if args.json:
        import json

        from reflection_assets.engines.benchmark import latest_scores

        db = _storage().db()
        found = [latest for name in names if (latest := latest_scores(db, name)) is not None]
        print(json.dumps(found, indent=2))
        return 0
    if not _print_scores(names):
        print("no benchmark scores yet: materialize benchmark_scores (e.g. `reflection run --select benchmark_scores`)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from reflection_assets.definitions import DATASET_ASSETS, RECORD_ASSETS, defs
    from reflection_assets.dagster_instance import ensure_instance
    from reflection_assets.engines.lineage import oracle_spend
    from reflection_assets.status import asset_statuses, render, unobserved_changes

    storage = _storage()
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
        print(("\n" if number else "") + "\n".join(render(spec.name, statuses, oracle_spend(storage.db(), spec.name), changes)))
    from reflection_assets.run_workers import dead_runs

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
    from reflection_assets.run_workers import recover

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
    from reflection_assets.runner import observe

    for key, facts in observe(ensure_instance(), defs).items():
        print(f"{key:<8} fingerprint {facts['fingerprint']}  {facts['backend']} {facts['model']} ({facts['prompt_version']})")
    return 0


def cmd_instance(args: argparse.Namespace) -> int:
    from reflection_assets.dagster_instance import ensure_instance

    instance = ensure_instance()
    storage = _storage()
    where = "PostgreSQL (DAGSTER_PG_URL)" if "postgres" in type(instance.run_storage).__name__.lower() else "SQLite files there"
    print(f"Dagster instance  {instance.root_directory}: runs, event logs and schedules in {where}")
    print(f"DuckDB database   {storage.database_path()}")
    print(f"model artifacts   {storage.artifacts_path()}")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from reflection_assets.dagster_instance import ensure_instance

    _recover(ensure_instance(), quiet_when_nothing=False)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from reflection_assets.assets.partitions import DATASETS, RECORD_PARTITIONS
    from reflection_assets.definitions import JOB_FOR_PARTITIONS, defs
    from reflection_assets.dagster_instance import ensure_instance
    from reflection_assets.runner import (
        resolve_selection,
        run_dataset_partition,
        run_record_partitions,
        sync_dataset_partitions,
    )

    registry = _storage().registry()
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
    for spec in specs:
        if record_keys:
            outcomes += run_record_partitions(
                instance,
                defs,
                JOB_FOR_PARTITIONS[RECORD_PARTITIONS],
                record_keys,
                spec.name,
                args.shard,
                args.log_level,
                asset_config,
            )
        if dataset_keys and not args.shard and all(o.success for o in outcomes):
            outcomes += run_dataset_partition(
                instance, defs, JOB_FOR_PARTITIONS[DATASETS], dataset_keys, spec.name, args.log_level, asset_config
            )
        if any(o.interrupted for o in outcomes):
            break
    _print_summary(outcomes)
    if any(o.interrupted for o in outcomes):
        print("reflection: interrupted; nothing more was launched", file=sys.stderr)
        return 130
    if any(k.to_user_string() == "benchmark_scores" for k in dataset_keys):
        _print_scores([o.dataset for o in outcomes if o.success and o.shard is None])
    return 0 if all(o.success for o in outcomes) else 1


def _oracle_resource(judge: bool):
    from reflection_assets.assets.resources import JudgeResource, OracleResource

    return JudgeResource() if judge else OracleResource()


def cmd_oracle_info(args: argparse.Namespace) -> int:
    from reflection_assets.engines.oracle.cache import OracleCache

    settings, sources = _oracle_resource(args.judge).settings_with_sources()
    for name, value in settings.described().items():
        source = sources.get(name)
        print(f"{name:<24}{value!s:<34}{'' if source in (None, 'default') else 'from ' + source}".rstrip())
    source = sources["api_key"]
    print(f"{'api_key':<24}{'set' if settings.api_key else 'not set':<34}{'' if source == 'default' else 'from ' + source}".rstrip())
    print(f"{'prompt profile':<24}{settings.prompt_profile}")
    spend = OracleCache(_storage().db()).spend()
    if spend:
        print("\ncached replies by fingerprint:")
        for row in spend:
            print(f"  {row.fingerprint}  {row.model:<30} {row.replies:>8} replies {row.tokens:>12,} tokens  ${row.cost_usd:.4f}")
    return 0


def cmd_oracle_ask(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    resource = _oracle_resource(args.judge)
    client = resource.client(_storage())
    messages = ([("system", args.system)] if args.system else []) + [("user", args.text)]
    [reply] = list(client.complete_many([client.request(messages, "ask")]))
    if not reply.ok:
        print(f"reflection: the oracle failed ({reply.error_kind}): {reply.error}", file=sys.stderr)
        return 1
    print(reply.text)
    print(
        f"\n[{'cached' if reply.cached else 'sent'}; finish {reply.finish_reason}; "
        f"{reply.prompt_tokens}+{reply.completion_tokens} tokens; ${reply.cost_usd:.6f}; "
        f"fingerprint {reply.fingerprint}]",
        file=sys.stderr,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reflection_assets.engines.export import export_dataset
    from reflection_assets.engines.settings import shard_count

    storage = _storage()
    storage.registry().get(args.name)
    result = export_dataset(storage.db(), args.name, args.stage, args.format, Path(args.out), shard_count())
    print(f"wrote {result.rows} {'rows' if result.entry is None else 'records'} to {result.path} ({args.format})")
    if result.entry is not None:
        print(f"LLaMA-Factory entry {result.entry!r} in {result.dataset_info}")
    if result.shards_missing:
        shards = ", ".join(f"{s:02d}" for s in result.shards_missing)
        print(f"warning: shard(s) {shards} have no {args.stage} rows yet; the file holds the others", file=sys.stderr)
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from reflection_assets.assets.metadata import one_line
    from reflection_assets.engines.lineage import record_lineage

    for chain in record_lineage(_storage().db(), args.record_id, args.dataset):
        r = chain.record
        print(f"record {r['record_id']} in dataset {r['dataset']} (shard {r['shard']:02d})")
        print(f"  source      {r['source_file']}, row {r['source_row']} (version {r['source_version']})")
        print(f"  instruction {one_line(r['original_instruction'])}")
        if r["original_input"]:
            print(f"  input       {one_line(r['original_input'])}")
        print(f"  output      {one_line(r['original_output'])}")
        print("  oracle calls:")
        if not chain.calls:
            print("    none yet: materialize reflected_instructions for this shard")
        for call in chain.calls:
            if call["model"] is None:
                answer = f"no reply ({call['last_error'] or 'not sent yet'})"
            else:
                answer = (
                    f"{call['model']}, fingerprint {call['fingerprint']}, finish {call['finish_reason']}, "
                    f"{call['prompt_tokens']}+{call['completion_tokens']} tokens, ${call['cost_usd']:.6f}"
                )
            print(f"    {call['stage']:<26} {call['request_key'][:16]}  {answer}")
            print(f"    {'':<26} parse: {call['parse_outcome']}{' - ' + one_line(call['reason'], 80) if call['reason'] else ''}")
        if r["provenance"] is None:
            print("  recycled: not yet (materialize recycled_dataset)")
        else:
            print(f"  recycled ({r['recycle_mode']} mode): {r['provenance']}")
            print(f"    instruction {one_line(r['final_instruction'])}")
            if r["final_input"]:
                print(f"    input       {one_line(r['final_input'])}")
            print(f"    output      {one_line(r['final_output'])}")
        if not chain.models:
            print("  models: none trained on it (held out from training, or no adapter trained yet)")
        else:
            print("  models trained on it:")
        seen: set[str] = set()
        for model in chain.models:
            if model["adapter_id"] not in seen:
                seen.add(model["adapter_id"])
                current = ", current" if model["is_current"] else ""
                print(f"    {model['variant']} adapter {model['adapter_id']} ({model['trained_at']:%Y-%m-%d %H:%M}{current}) {model['path']}")
            if model["benchmark_run"]:
                print(
                    f"      benchmark {model['benchmark_run']} ({model['benchmarked_at']:%Y-%m-%d %H:%M}), judge "
                    f"{model['judge_model']}: winning score {model['winning_scores'] or 'n/a'}"
                )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reflection",
        description="Recycle instruction-tuning data with an oracle LLM, as Dagster assets.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    datasets = sub.add_parser("datasets", help="register and list datasets")
    dsub = datasets.add_subparsers(dest="datasets_command", required=True)
    add = dsub.add_parser("add", help="register a dataset under a name")
    add.add_argument("name", help="the dataset's name: a partition key in the UI")
    add.add_argument(
        "source",
        help="a .json (Alpaca array), .jsonl, .csv, .parquet file, a folder saved with "
        "`datasets`, or bundled:sample",
    )
    add.add_argument("--format", choices=FORMATS, help="override detection from the path")
    add.add_argument(
        "--field",
        action="append",
        metavar="ROLE=COLUMN",
        help="map a column to instruction, input or output (repeatable)",
    )
    add.add_argument("--replace", action="store_true", help="re-point an existing name")
    add.set_defaults(func=cmd_datasets_add)
    lst = dsub.add_parser("list", help="list registered datasets")
    lst.set_defaults(func=cmd_datasets_list)

    testsets = sub.add_parser("testsets", help="register and list evaluation test sets")
    tsub = testsets.add_subparsers(dest="testsets_command", required=True)
    tadd = tsub.add_parser("add", help="register a test set file under a name")
    tadd.add_argument("name", help="the name benchmark_scores' `testsets` setting uses")
    tadd.add_argument("source", help="a JSON or JSON Lines file: Vicuna, Koala, WizardLM, Self-Instruct, LIMA or AlpacaEval")
    tadd.add_argument("--format", choices=tuple(TESTSET_FORMATS), help="override detection from the first object")
    tadd.set_defaults(func=cmd_testsets_add)
    tlist = tsub.add_parser("list", help="list test sets (bundled is always there)")
    tlist.set_defaults(func=cmd_testsets_list)

    status = sub.add_parser("status", help="what is materialized, stale (and why) or failed, per dataset")
    status.add_argument("--dataset", help="one registered dataset (default: all)")
    status.set_defaults(func=cmd_status)

    scores = sub.add_parser("scores", help="print the latest benchmark scores")
    scores.add_argument("--dataset", help="one registered dataset (default: all)")
    scores.add_argument(
        "--json", action="store_true",
        help="a JSON array, one object per dataset with a benchmark: for scripts and CI gates",
    )
    scores.set_defaults(func=cmd_scores)

    run = sub.add_parser("run", help="materialize assets headless, as the UI would")
    run.add_argument("--dataset", help="one registered dataset (default: all)")
    run.add_argument("--select", help="comma-separated asset names (default: every asset)")
    run.add_argument(
        "--shard", action="append", help="only this shard key, e.g. 03 (repeatable; default all)"
    )
    run.add_argument(
        "--upstream", action="store_true", help="also materialize what the selection depends on"
    )
    run.add_argument(
        "--config",
        help="YAML file of asset settings, e.g. {recycled_dataset: {mode: instruction}}",
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=cmd_run)

    export = sub.add_parser("export", help="write a dataset in a standard layout for training tools")
    export.add_argument("name", help="a registered dataset")
    export.add_argument(
        "--format", required=True, choices=EXPORT_FORMATS,
        help="alpaca, jsonl, sharegpt or parquet; a reflection stage: jsonl or parquet",
    )
    export.add_argument("--out", required=True, help="the file to write; dataset_info.json goes beside a training set")
    export.add_argument(
        "--stage", default="recycled", choices=(*STAGES, *INSPECTION_STAGES),
        help="recycled (default) or raw: a training set; reflected_instructions or reflected_responses: "
        "one row per record and variant with the stage's outcome and reason",
    )
    export.set_defaults(func=cmd_export)

    observe = sub.add_parser(
        "observe", help="observe the oracle and the judge now: what changed makes its shards stale"
    )
    observe.set_defaults(func=cmd_observe)

    instance = sub.add_parser(
        "instance", help="write $DAGSTER_HOME/dagster.yaml if needed and say where state lives"
    )
    instance.set_defaults(func=cmd_instance)

    recover = sub.add_parser(
        "recover",
        help="mark failed the runs whose process died (killed, crashed) and free their pool slots",
    )
    recover.set_defaults(func=cmd_recover)

    lineage = sub.add_parser("lineage", help="print the chain of one record, source to final pair")
    lineage.add_argument("record_id", help="a record id, or a unique prefix of 6+ characters")
    lineage.add_argument("--dataset", help="only in this dataset")
    lineage.set_defaults(func=cmd_lineage)

    oracle = sub.add_parser("oracle", help="inspect and try the oracle (or judge) settings")
    osub = oracle.add_subparsers(dest="oracle_command", required=True)
    info = osub.add_parser("info", help="effective settings (never the key) and cached spend")
    info.add_argument("--judge", action="store_true", help="the judge's settings instead")
    info.set_defaults(func=cmd_oracle_info)
    ask = osub.add_parser("ask", help="send one prompt through the client (cached like any other)")
    ask.add_argument("text")
    ask.add_argument("--system", help="a system message")
    ask.add_argument("--judge", action="store_true", help="ask the judge instead")
    ask.set_defaults(func=cmd_oracle_ask)
    return parser


def _terminate(signum, frame) -> None:
    # SIGTERM (`timeout`, `kill`, a supervisor) stops a command as Ctrl-C does: a run in
    # progress ends canceled, with what it holds given back.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import signal
    import warnings

    signal.signal(signal.SIGTERM, _terminate)
    # Dagster's beta/preview notices are for code authors, not for someone running a command.
    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("reflection: interrupted", file=sys.stderr)
        return 130
    except UserError as exc:  # anything else is a bug: its traceback stays
        print(f"reflection: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
