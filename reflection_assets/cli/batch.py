"""`reflection batch export | import | list | cancel`: offline batch files for servers
without a Batch API (`vllm run-batch`), and the batches batch mode has recorded."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reflection_assets.cli.common import storage_resource


def _resource(role: str):
    """The oracle's (or judge's) resource, as the definitions give it to the runs."""
    from reflection_assets.definitions import resource

    return resource("judge" if role == "judge" else "oracle")


def cmd_batch_export(args: argparse.Namespace) -> int:
    from reflection_assets.assets.oracles import served_identity_for
    from reflection_assets.assets.partitions import SHARDS
    from reflection_assets.dagster_instance import ensure_instance
    from reflection_assets.engines.planning.batch_files import stage_requests, write_export
    from reflection_assets.engines.oracle.batch_store import BatchStore
    from reflection_assets.engines.oracle.client import DeferringClient
    from reflection_assets.engines.reflection.phases import repair_calls

    storage = storage_resource()
    storage.registry().get(args.dataset)  # an unknown name fails here, with the names there are
    resource = _resource("oracle")
    settings = resource.settings()
    served = served_identity_for(ensure_instance(), "oracle", settings)
    client = resource.client(storage, served=served, client_class=DeferringClient)
    shards = [int(key) for key in SHARDS.get_partition_keys()]
    # The stage's default settings (`repair: auto`, `also_original: true`).
    requests = stage_requests(client, storage.db(), args.dataset, shards, args.stage, repair_calls("auto", settings.kind.repair_default))
    out = Path(args.out)
    write_export(
        BatchStore(storage.db()), requests, out, role="oracle", model=settings.model,
        base_url=settings.base_url, dataset=args.dataset, stage=args.stage,
    )
    if requests:
        print(f"wrote {len(requests)} requests of {args.stage} for {args.dataset} to {out} "
              f"(model {settings.model}; custom_id is the request key)")
        print(f"run them, e.g. `vllm run-batch -i {out} -o replies.jsonl --model {settings.model}`, then "
              "`reflection batch import replies.jsonl`; export again until it writes nothing "
              "(a follow-up call is asked once the reply it follows is in)")
    else:
        print(f"nothing to export: every request {args.stage} needs for {args.dataset} is answered; "
              "materializing it sends nothing")
    return 0


def cmd_batch_import(args: argparse.Namespace) -> int:
    from reflection_assets.engines.planning.batch_files import import_files
    from reflection_assets.engines.oracle.batch_store import BatchStore

    settings = _resource("oracle").settings()
    db = storage_resource().db()
    report = import_files(
        db, [Path(p) for p in args.files], settings.batch_discount,
        (settings.price_input_per_mtok, settings.price_output_per_mtok),
    )
    BatchStore(db).mark_imported()
    summary, *unknown = report.lines(args.files)
    print(summary)
    for line in unknown:
        print(f"reflection: {line}", file=sys.stderr)
    return 1 if report.unknown else 0


def cmd_batch_list(args: argparse.Namespace) -> int:
    from reflection_assets.engines.oracle.batch_store import BatchStore

    records = BatchStore(storage_resource().db()).listed(args.dataset)
    if not records:
        print("no batches yet: batch mode (REFLECTION_ORACLE_MODE=batch) and `reflection batch export` record them")
        return 0
    print(f"{'batch':<25} {'kind':<5} {'role':<6} {'dataset|shard':<16} {'stage':<22} {'status':<11} "
          f"{'requests':>8} {'done':>6} {'failed':>6}  provider id / file")
    for r in records:
        where = f"{r.dataset or '-'}" + (f"|{r.shard:02d}" if r.shard is not None else "")
        status = r.status + ("*" if r.cancel_requested else "")
        tries = f" (retry {r.attempt - 1})" if r.attempt > 1 else (" (resubmitted)" if r.whole_retry else "")
        print(f"{r.batch_key:<25} {r.kind:<5} {r.role:<6} {where:<16} {(r.stage or '-'):<22} {status:<11} "
              f"{r.requests:>8} {r.completed:>6} {r.failed:>6}  {r.provider_batch_id or r.input_file_id or '-'}{tries}")
        if r.message:
            print(f"{'':<25} {r.message}")
    return 0


def cmd_batch_cancel(args: argparse.Namespace) -> int:
    import openai

    from reflection_assets.engines.oracle.batch import batch_api
    from reflection_assets.engines.oracle.batch_store import LIVE, BatchStore

    store = BatchStore(storage_resource().db())
    live = [r for r in store.listed(args.dataset) if r.kind == "api" and r.status in LIVE and r.provider_batch_id]
    if not live:
        print(f"no live batches of {args.dataset}")
        return 0
    failed = 0
    for record in live:
        api = batch_api(_resource(record.role).settings())
        try:
            batch = api.batches.cancel(record.provider_batch_id)
        except openai.APIError as exc:  # said per batch; the others are still cancelled
            failed += 1
            print(f"reflection: cancelling {record.provider_batch_id} failed: {exc}", file=sys.stderr)
            continue
        finally:
            api.close()
        store.update(record.batch_key, cancel_requested=True, status=batch.status)
        print(f"cancelled {record.provider_batch_id} ({record.stage}, {record.requests} requests): now {batch.status}")
    print("the run waiting on them stores what they answered and records the rest as cancelled")
    return 1 if failed else 0


def add_parser(sub) -> None:
    from reflection_assets.engines.planning.batch_files import EXPORT_STAGES

    batch = sub.add_parser("batch", help="offline batch files, and the batches batch mode recorded")
    bsub = batch.add_subparsers(dest="batch_command", required=True)
    export = bsub.add_parser("export", help="write the requests a stage still needs as OpenAI batch input lines")
    export.add_argument("--dataset", required=True, help="a registered dataset")
    export.add_argument("--stage", required=True, choices=EXPORT_STAGES)
    export.add_argument("--out", required=True, help="the JSON Lines file to write")
    export.set_defaults(func=cmd_batch_export)
    imp = bsub.add_parser("import", help="store replies from batch output files (OpenAI's layout or vllm run-batch's)")
    imp.add_argument("files", nargs="+", metavar="FILE")
    imp.set_defaults(func=cmd_batch_import)
    lst = bsub.add_parser("list", help="the batches and exported files, with their states")
    lst.add_argument("--dataset", help="one dataset's (default: all)")
    lst.set_defaults(func=cmd_batch_list)
    cancel = bsub.add_parser("cancel", help="cancel a dataset's live batches")
    cancel.add_argument("--dataset", required=True)
    cancel.set_defaults(func=cmd_batch_cancel)
