"""The `reflection` command: register datasets and materialize assets headless; the
handlers live beside this module, one file per group of commands."""

from __future__ import annotations

import argparse
import sys

from reflection_assets.cli.batch import add_parser as add_batch_parser
from reflection_assets.cli.inspection import cmd_adapters, cmd_export, cmd_lineage, cmd_scores
from reflection_assets.cli.oracle import cmd_oracle_ask, cmd_oracle_info
from reflection_assets.cli.registry import cmd_datasets_add, cmd_datasets_list, cmd_testsets_add, cmd_testsets_list
from reflection_assets.cli.runs import cmd_estimate, cmd_instance, cmd_observe, cmd_recover, cmd_run, cmd_status
from reflection_assets.cli.store import add_parser as add_store_parser
from reflection_assets.engines.data.export import EXPORT_FORMATS, INSPECTION_STAGES, STAGES
from reflection_assets.engines.data.sources import FORMATS
from reflection_assets.engines.benchmark.testsets import FORMATS as TESTSET_FORMATS
from reflection_assets.errors import UserError


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
    add.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="only the source's first N rows (a first look at a large dataset; `make demo` takes 32)",
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

    adapters = sub.add_parser("adapters", help="the trained adapters (and full models): where, how, on what")
    adapters.add_argument("--dataset", help="one registered dataset (default: all)")
    adapters.add_argument("--all", action="store_true", help="every adapter trained, not only the current ones")
    adapters.add_argument("--json", action="store_true", help="one JSON array, every registry field")
    adapters.add_argument(
        "--serve-args", action="store_true",
        help="the vLLM arguments that serve exactly these adapters, each under its adapter id "
        "(--enable-lora --max-lora-rank R --lora-modules ID=PATH ...): for REFLECTION_ANSWERS_BACKEND=openai",
    )
    adapters.set_defaults(func=cmd_adapters)

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
    run.add_argument(
        "--per-shard", action="store_true",
        help="every shard in one run of all its stages, each stage asking the oracle from its own run "
        "(default with the embedded model or batch mode: stage by stage, the whole dataset's requests "
        "sent ahead together)",
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=cmd_run)

    estimate = sub.add_parser(
        "estimate", help="what the reflection stages will cost and take, before anything is paid"
    )
    estimate.add_argument("--dataset", required=True, help="a registered dataset whose raw_dataset is materialized")
    estimate.add_argument(
        "--stage", action="extend", nargs="+",
        choices=("reflected_instructions", "reflected_responses", "benchmark_scores"),
        help="the stages to estimate (default: both reflection stages); benchmark_scores: its judge's requests",
    )
    estimate.add_argument(
        "--pilot", type=int, default=0, metavar="N",
        help="first send N records through the stages (paid once, cached, never paid again) to measure replies",
    )
    estimate.add_argument(
        "--config", help="the YAML of asset settings `reflection run --config` takes (repair, also_original; "
        "benchmark_scores: testsets, max_prompts, max_new_tokens, compare_base)",
    )
    estimate.add_argument("--json", action="store_true", help="print JSON: stages [{stage, requests, ...}] and total_cost_usd")
    estimate.set_defaults(func=cmd_estimate)

    export = sub.add_parser("export", help="write a dataset in a standard layout for training tools")
    export.add_argument("name", help="a registered dataset")
    export.add_argument(
        "--format", required=True, choices=EXPORT_FORMATS,
        help="alpaca, jsonl, sharegpt or parquet; dpo: preference pairs (prompt, chosen, rejected) of the "
        "records whose answer phase 2 rewrote, from --stage recycled or selective; a stage's inspection rows: "
        "jsonl or parquet",
    )
    export.add_argument("--out", required=True, help="the file to write; dataset_info.json goes beside a training set")
    export.add_argument(
        "--stage", default="recycled", choices=(*STAGES, *INSPECTION_STAGES),
        help="recycled (default), selective (the student-selected set) or raw: a training set; "
        "reflected_instructions or reflected_responses: one row per record and variant with the stage's "
        "outcome and reason; scores: the student's perplexities, IFD and r-IFD per record and variant",
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

    add_batch_parser(sub)
    add_store_parser(sub)

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
