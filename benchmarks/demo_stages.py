"""The main job's wall time per stage, before and after, side by side in one run.

`make demo`'s two commands (register the bundled sample, `reflection run`) on a fresh
DAGSTER_HOME each, in two shapes:
- before: every shard in one run of all its stages, each stage asking the embedded oracle
  for its own shard's records (`--per-shard`), at the earlier generation batch of 16;
- after: the default: stage by stage, each reflection stage's requests for the whole
  dataset sent ahead together, at the default batch (32).
Then the time of each asset's steps, read back from the Dagster instance (summed over the
shards), and the run's wall time. `--records N` takes the sample's first N records (the
whole sample is 128: about an hour for both shapes on a 2-core CPU without bfloat16);
`--select` limits the stages as `reflection run --select ... --upstream` does.

.venv/bin/python benchmarks/demo_stages.py [--records 128] [--select selective_dataset]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ("raw_dataset", "reflected_instructions", "reflected_responses", "recycled_dataset", "student_scores",
          "selective_dataset", "baseline_adapter", "recycled_adapter", "selective_adapter", "benchmark_scores")
SHAPES = {
    "before": (["--per-shard"], {"REFLECTION_ORACLE_BATCH_SIZE": "16"}),
    "after": ([], {}),
}


def step_seconds(home: str) -> tuple[dict[str, float], int]:
    """Seconds per asset, summed over its steps in every run of the instance; and the runs."""
    script = (
        "import json, dagster as dg\n"
        "from collections import defaultdict\n"
        "instance = dg.DagsterInstance.get()\n"
        "seconds = defaultdict(float)\n"
        "runs = instance.get_runs()\n"
        "for run in runs:\n"
        "    for stat in instance.get_run_step_stats(run.run_id):\n"
        "        if stat.start_time and stat.end_time:\n"
        "            seconds[stat.step_key] += stat.end_time - stat.start_time\n"
        "print(json.dumps([seconds, len(runs)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, DAGSTER_HOME=home), check=True,
                         capture_output=True, text=True).stdout
    seconds, runs = json.loads(out.strip().splitlines()[-1])
    return seconds, runs


def run_shape(shape: str, source: Path, select: list[str]) -> dict:
    flags, settings = SHAPES[shape]
    with tempfile.TemporaryDirectory(prefix=f"demo-{shape}-") as folder:
        env = dict(os.environ, DAGSTER_HOME=folder, **settings)
        for name in ("REFLECTION_DUCKDB", "REFLECTION_ARTIFACTS", "REFLECTION_SHARDS"):
            env.pop(name, None)
        started = time.perf_counter()
        run = ["run", "--dataset", "sample", *flags] + (["--select", ",".join(select), "--upstream"] if select else [])
        for args in (["datasets", "add", "sample", str(source)], run):
            subprocess.run([str(BIN / "reflection"), *args], env=env, check=True, cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        total = time.perf_counter() - started
        seconds, runs = step_seconds(folder)
    return {"seconds": seconds, "runs": runs, "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=128)
    parser.add_argument("--select", default="", help="comma-separated assets (with what they depend on)")
    args = parser.parse_args()
    rows = json.loads((REPO / "reflection_assets" / "data" / "sample_alpaca.json").read_text())[: args.records]
    select = [s for s in args.select.split(",") if s]
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "sample.json"
        source.write_text(json.dumps(rows))
        results = {shape: run_shape(shape, source, select) for shape in SHAPES}
    before, after = results["before"], results["after"]
    print(f"the main job on {len(rows)} records of the bundled sample (16 shards), embedded model, fresh homes")
    print(f"{'stage':<26}{'before s':>10}{'after s':>10}{'ratio':>8}")
    for stage in STAGES:
        b, a = before["seconds"].get(stage), after["seconds"].get(stage)
        if b is None and a is None:
            continue
        ratio = f"{b / a:.2f}x" if a and b else "-"
        print(f"{stage:<26}{b or 0:>10.1f}{a or 0:>10.1f}{ratio:>8}")
    for label, key in (("steps in all", None), ("the two commands", "total")):
        b = before[key] if key else sum(before["seconds"].values())
        a = after[key] if key else sum(after["seconds"].values())
        print(f"{label:<26}{b:>10.1f}{a:>10.1f}{b / a:>7.2f}x")
    print(f"{'Dagster runs':<26}{before['runs']:>10}{after['runs']:>10}")
    print("(after: the reflection stages' generation happens while their requests are sent ahead, before their "
          "steps, which then find every reply in the cache: compare the two commands' totals; both also hold "
          "process start-up and the model conversion)")


if __name__ == "__main__":
    main()
