"""IFD / r-IFD scoring: the official one-sample-at-a-time loop against ours, side by side.

The official loop is selection_code/data_analysis.py of tianyi-lab/Reflection_Tuning (its
two functions below, unchanged but for the bare `except`), on the same model object, in
float32 as it loads the model. Ours is engines/selection/ifd.py: batched by length, the vocabulary
projection only where a label is, identical sequences once; in float32 (to compare the
numbers) and in the precision `auto` picks on this machine.

    .venv/bin/python benchmarks/ifd_throughput.py [--records 64] [--max-length 2048]

With `--database FILE --dataset NAME` (a DuckDB file where the main job ran) it also scores
every variant of every record in both precisions and counts the records whose selection
decision (method/selection.py) differs between them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from reflection_assets.engines.selection.ifd import Pair, StudentScorer  # noqa: E402
from reflection_assets.method.selection import fill, reverse_instruction  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "reflection_assets/data/sample_alpaca.json"


def get_perplexity_and_embedding_whole_text(tokenizer, model, text, max_length):
    input_ids = tokenizer.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
    with torch.no_grad():
        outputs = model(input_ids, labels=input_ids.contiguous())
    loss = outputs.loss
    return torch.exp(loss).item(), loss.item()


def get_perplexity_and_embedding_part_text(tokenizer, model, text, target_span, max_length):
    input_ids = tokenizer.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
    start_index = text.rfind(target_span)
    start_token = len(tokenizer.encode(text[:start_index]))
    labels = input_ids.clone()
    labels[0, :start_token] = -100
    with torch.no_grad():
        outputs = model(input_ids, labels=labels)
    loss = outputs.loss
    return torch.exp(loss).item(), loss.item()


def official(tokenizer, model, pair: Pair, max_length: int) -> tuple[float, float]:
    """(IFD, r-IFD) as data_analysis.py + put_analysis_to_data.py compute them."""
    instruct, input_i, output = pair.instruction, pair.input, pair.output
    prompt = fill("vicuna", instruct, input_i)
    instruct_len = tokenizer.encode(prompt, return_tensors="pt", truncation=True, max_length=max_length).shape[1]
    reverse = fill("vicuna", reverse_instruction(output), "")
    reverse_len = tokenizer.encode(reverse, return_tensors="pt", truncation=True, max_length=max_length).shape[1]
    ppl_ins_alone, _ = get_perplexity_and_embedding_whole_text(tokenizer, model, instruct + input_i, max_length - reverse_len + 1)
    ppl_out_alone, _ = get_perplexity_and_embedding_whole_text(tokenizer, model, output, max_length - instruct_len + 1)
    ppl_ins_condition, _ = get_perplexity_and_embedding_part_text(tokenizer, model, reverse + instruct + input_i, instruct, max_length)
    ppl_out_condition, _ = get_perplexity_and_embedding_part_text(tokenizer, model, prompt + output, output, max_length)
    return ppl_out_condition / ppl_out_alone, ppl_ins_condition / ppl_ins_alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--database", help="a DuckDB file with reflected variants (selection.variants)")
    parser.add_argument("--dataset", default="sample")
    args = parser.parse_args()
    rows = json.loads(SAMPLE.read_text())[: args.records]
    pairs = [Pair(r["instruction"], r.get("input", ""), r["output"]) for r in rows]
    artifacts = Path(tempfile.gettempdir()) / "reflection-bench-artifacts"
    torch.set_num_threads(max(1, torch.get_num_threads()))

    fp32 = StudentScorer("SmolLM2-135M-Instruct", artifacts, "vicuna", args.max_length, "float32", 16, log=lambda _: None)
    tokenizer, model = fp32.tokenizer(), fp32.model()
    official(tokenizer, model, pairs[0], args.max_length)  # warm-up, not timed
    started = time.perf_counter()
    reference = [official(tokenizer, model, p, args.max_length) for p in pairs]
    official_s = time.perf_counter() - started

    print(f"{len(pairs)} records of the bundled sample (4 forward passes each), vicuna template, "
          f"max_length {args.max_length}, {torch.get_num_threads()} threads, SmolLM2-135M-Instruct")
    print(f"  official loop, one sample at a time, float32: {official_s:7.1f} s  ({len(pairs) / official_s:.2f} records/s)")
    for scorer in (fp32, StudentScorer("SmolLM2-135M-Instruct", artifacts, "vicuna", args.max_length, "auto", 16, log=lambda _: None)):
        scorer.score(pairs[:2])  # loads the model; not timed
        started = time.perf_counter()
        ours = scorer.score(pairs)
        ours_s = time.perf_counter() - started
        bad = [o.status for o in ours if o.status != "ok"]
        diffs = [
            max(abs(o.losses.ifd - ifd) / ifd, abs(o.losses.r_ifd - r_ifd) / r_ifd)
            for o, (ifd, r_ifd) in zip(ours, reference, strict=True)
            if o.losses is not None and math.isfinite(ifd)
        ]
        print(
            f"  ours, batched, {scorer.dtype:<8}:                 {ours_s:7.1f} s  ({len(pairs) / ours_s:.2f} records/s)  "
            f"{official_s / ours_s:.1f}x faster; IFD and r-IFD differ from the official by {statistics.median(diffs):.1e} "
            f"(median) to {max(diffs):.1e} (max), relative; not ok: {len(bad)}"
        )


    if args.database:
        decisions_by_precision(args.database, args.dataset, artifacts, args.max_length)


def decisions_by_precision(database: str, dataset: str, artifacts: Path, max_length: int) -> None:
    import duckdb

    from reflection_assets.method.selection import VariantScore, decide

    with duckdb.connect(database, read_only=True) as con:
        rows = con.execute(
            "SELECT record_id, variant, instruction, input, output FROM selection.variants WHERE dataset = ? ORDER BY ALL",
            [dataset],
        ).fetchall()
    pairs = [Pair(*r[2:]) for r in rows]
    decided = {}
    for dtype in ("float32", "auto"):
        scorer = StudentScorer("SmolLM2-135M-Instruct", artifacts, "vicuna", max_length, dtype, 16, log=lambda _: None)
        started = time.perf_counter()
        scores = scorer.score(pairs)
        by_record: dict[str, dict[str, VariantScore]] = {}
        for (record_id, variant, *_), score in zip(rows, scores, strict=True):
            losses = score.losses
            by_record.setdefault(record_id, {})[variant] = VariantScore(losses and losses.ifd, losses and losses.r_ifd)
        decided[scorer.dtype] = {rid: decide(v).kept for rid, v in by_record.items()}
        kept = sum(k is not None for k in decided[scorer.dtype].values())
        print(f"  {len(rows)} variants of {len(by_record)} records of {dataset!r} in {scorer.dtype}: "
              f"{time.perf_counter() - started:.1f} s, {kept} records kept")
    first, second = decided.values()
    differ = sum(first[rid] != second[rid] for rid in first)
    print(f"  the selection decision differs between the two precisions on {differ} of {len(first)} records")


if __name__ == "__main__":
    main()
