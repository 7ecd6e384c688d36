"""The `reflection` command: register datasets and materialize assets headless."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from reflection_assets.engines.datasets import DatasetError, parse_field_map
from reflection_assets.engines.sources import FORMATS
from reflection_assets.engines.storage import StorageError


def _storage():
    from reflection_assets.assets.resources import StorageResource

    return StorageResource()


def cmd_datasets_add(args: argparse.Namespace) -> int:
    from reflection_assets.runner import ensure_instance, sync_dataset_partitions

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


def _print_summary(outcomes) -> None:
    by_asset: dict[str, list[int]] = defaultdict(list)
    for outcome in outcomes:
        for asset, rows in outcome.rows.items():
            by_asset[asset].append(rows)
    ok = sum(o.success for o in outcomes)
    print(f"\n{ok} of {len(outcomes)} runs succeeded")
    for asset, counts in by_asset.items():
        print(f"  {asset}: {sum(counts)} rows in {len(counts)} partition(s)")
    for outcome in outcomes:
        where = f"{outcome.dataset}|{outcome.shard}" if outcome.shard else outcome.dataset
        if not outcome.success:
            print(f"  FAILED {where} (run {outcome.run_id}): {outcome.error}")
        for check in outcome.failed_checks:
            print(f"  check failed {where}: {check}")


def cmd_run(args: argparse.Namespace) -> int:
    from reflection_assets.assets.partitions import RECORD_PARTITIONS
    from reflection_assets.definitions import JOB_FOR_PARTITIONS, defs
    from reflection_assets.runner import (
        ensure_instance,
        resolve_selection,
        run_record_partitions,
        sync_dataset_partitions,
    )

    registry = _storage().registry()
    specs = [registry.get(args.dataset)] if args.dataset else registry.list()
    if not specs:
        raise DatasetError("no datasets registered; add one with `reflection datasets add NAME SOURCE`")
    instance = ensure_instance()
    sync_dataset_partitions(instance, [s.name for s in specs])
    select = [name.strip() for name in args.select.split(",")] if args.select else None
    keys = resolve_selection(defs, select, args.upstream)
    record_keys = [k for k in keys if defs.resolve_assets_def(k).partitions_def == RECORD_PARTITIONS]
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
            )
    _print_summary(outcomes)
    return 0 if all(o.success for o in outcomes) else 1


def _oracle_resource(judge: bool):
    from reflection_assets.assets.resources import JudgeResource, OracleResource

    return JudgeResource() if judge else OracleResource()


def cmd_oracle_info(args: argparse.Namespace) -> int:
    settings = _oracle_resource(args.judge).settings()
    for name, value in settings.described().items():
        print(f"{name:<22}{value}")
    print(f"{'api_key':<22}{'set' if settings.api_key else 'not set'}")
    with _storage().db().connect() as con:
        rows = con.execute(
            "SELECT fingerprint, model, replies, prompt_tokens + completion_tokens, cost_usd "
            "FROM oracle.spend ORDER BY model, fingerprint"
        ).fetchall()
    if rows:
        print("\ncached replies by fingerprint:")
        for fingerprint, model, replies, tokens, cost in rows:
            print(f"  {fingerprint}  {model:<30} {replies:>8} replies {tokens:>12,} tokens  ${cost:.4f}")
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

    run = sub.add_parser("run", help="materialize assets headless, as the UI would")
    run.add_argument("--dataset", help="one registered dataset (default: all)")
    run.add_argument("--select", help="comma-separated asset names (default: every asset)")
    run.add_argument(
        "--shard", action="append", help="only this shard key, e.g. 03 (repeatable; default all)"
    )
    run.add_argument(
        "--upstream", action="store_true", help="also materialize what the selection depends on"
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=cmd_run)

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from reflection_assets.runner import RunRequestError

    try:
        return args.func(args)
    except (DatasetError, StorageError, RunRequestError, ValueError) as exc:
        print(f"reflection: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
