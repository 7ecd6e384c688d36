"""`reflection scores`, `export` and `lineage`: what the pipeline made, for people and scripts."""

from __future__ import annotations

import argparse
import sys

from reflection_assets.cli.common import storage_resource


def print_scores(names: list[str]) -> bool:
    from reflection_assets.engines.benchmark.run import latest_report

    db = storage_resource().db()
    printed = False
    for name in names:
        lines = latest_report(db, name)
        if lines:
            print("\n" + "\n".join(lines))
            printed = True
    return printed


def cmd_scores(args: argparse.Namespace) -> int:
    names = [args.dataset] if args.dataset else [s.name for s in storage_resource().registry().list()]
    if args.json:
        import json

        from reflection_assets.engines.benchmark.run import latest_scores

        db = storage_resource().db()
        found = [latest for name in names if (latest := latest_scores(db, name)) is not None]
        print(json.dumps(found, indent=2))
        return 0
    if not print_scores(names):
        print("no benchmark scores yet: materialize benchmark_scores (e.g. `reflection run --select benchmark_scores`)")
    return 0


def cmd_adapters(args: argparse.Namespace) -> int:
    """The registry of training.adapters: the current adapter of each dataset's variant (the
    one benchmark_scores evaluates), or with --all every one trained."""
    import json

    from reflection_assets.engines.student.adapters import list_adapters

    storage = storage_resource()
    if args.dataset:
        storage.registry().get(args.dataset)
    rows = list_adapters(storage.db(), args.dataset, args.all)
    for row in rows:
        row["config"] = json.loads(row.pop("config_json"))
        row["created_at"] = str(row["created_at"])
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no adapters yet: materialize baseline_adapter, recycled_adapter or selective_adapter")
        return 0 if not args.serve_args else 1
    if args.serve_args:
        return _print_serve_args(rows)
    for row in rows:
        method = row["method"] or "lora"
        processes = f", {row['world_size']} processes" if (row["world_size"] or 1) > 1 else ""
        resumed = f", resumed from step {row['resumed_from_step']}" if row["resumed_from_step"] else ""
        eval_loss = f"{row['eval_loss']:.3f}" if row["eval_loss"] is not None else "-"
        print(f"{row['dataset']} / {row['variant']}{'' if row['current'] else ' (not current)'}: {row['adapter_id']} "
              f"({method} on {row['base_model']}, {row['records']} records, {row['steps']} steps{processes}{resumed}; "
              f"train loss {row['train_loss']:.3f}, eval loss {eval_loss})\n    {row['path']}")
    return 0


def _print_serve_args(rows: list[dict]) -> int:
    """vLLM's arguments for the LoRA adapters among `rows` (one line, for `$(...)`); a full
    model is a model of its own, served by its own server, which stderr says."""
    import shlex

    lora = [r for r in rows if (r["method"] or "lora") != "full"]
    for row in rows:
        if row not in lora:
            print(f"{row['dataset']} / {row['variant']} ({row['adapter_id']}) is a whole model (method full), not an "
                  f"adapter: serve it on its own, e.g. vllm serve {shlex.quote(row['path'])} --served-model-name "
                  f"{row['adapter_id']}", file=sys.stderr)
    bases = sorted({r["base_model"] for r in lora})
    if len(bases) > 1:
        print(f"the adapters have different base models ({', '.join(bases)}): one server serves one base; "
              "pass --dataset", file=sys.stderr)
        return 1
    if not lora:
        return 1
    # vLLM takes these ranks only: the next one up from the largest adapter's.
    largest = max(int(r["config"].get("lora_rank", 8)) for r in lora)
    rank = next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= largest), largest)
    modules = [f"{r['adapter_id']}={r['path']}" for r in lora]
    print(" ".join(["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(modules)),
                    "--lora-modules", *(shlex.quote(m) for m in modules)]))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reflection_assets.engines.data.export import export_dataset
    from reflection_assets.engines.settings import shard_count

    storage = storage_resource()
    storage.registry().get(args.name)
    result = export_dataset(storage.db(), args.name, args.stage, args.format, Path(args.out), shard_count())
    what = "rows" if result.entry is None else "preference pairs" if args.format == "dpo" else "records"
    print(f"wrote {result.rows} {what} to {result.path} ({args.format})")
    if result.entry is not None:
        print(f"LLaMA-Factory entry {result.entry!r} in {result.dataset_info}")
    if result.shards_empty:
        print(f"{result.shards_empty} shard(s) materialized with no {'pair' if args.format == 'dpo' else args.stage + ' row'}"
              + (" (the student kept none of their records)" if args.stage == "selective" else ""))
    if result.shards_missing:
        shards = ", ".join(f"{s:02d}" for s in result.shards_missing)
        print(f"warning: shard(s) {shards} have no {args.stage} rows yet; the file holds the others", file=sys.stderr)
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from reflection_assets.engines.data.lineage import one_line, record_lineage

    for chain in record_lineage(storage_resource().db(), args.record_id, args.dataset):
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
            if call["model"] is not None:
                served = call["served_model"] or "not recorded (answered before the probe existed)"
                if call["system_fingerprint"]:
                    served += f", system_fingerprint {call['system_fingerprint']}"
                print(f"    {'':<26} served by: {served}")
            print(f"    {'':<26} parse: {call['parse_outcome']}{' - ' + one_line(call['reason'], 80) if call['reason'] else ''}")
        if r["provenance"] is None:
            print("  recycled: not yet (materialize recycled_dataset)")
        else:
            print(f"  recycled ({r['recycle_mode']} mode): {r['provenance']}")
            print(f"    instruction {one_line(r['final_instruction'])}")
            if r["final_input"]:
                print(f"    input       {one_line(r['final_input'])}")
            print(f"    output      {one_line(r['final_output'])}")
        if chain.scores:
            print("  student scores (selective recycling):")
            for score in chain.scores:
                if score["status"] == "ok":
                    shown = f"IFD {score['ifd']:.4f}  r-IFD {score['r_ifd']:.4f}"
                else:
                    shown = f"{score['status']}: {one_line(score['reason'], 70)}"
                print(f"    {score['variant']:<12} {shown}")
            decision = chain.decision
            if decision is None:
                print("  selective: not yet (materialize selective_dataset)")
            else:
                verdict = "dropped" if decision["kept"] is None or decision["cut_by_top_k"] else f"kept '{decision['kept']}'"
                print(f"  selective: {verdict} - {decision['reason']}")
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
