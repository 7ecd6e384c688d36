"""The main job's wall time per stage: `make demo`'s two commands (register the bundled
sample, `reflection run` every stage) on a fresh DAGSTER_HOME, timed as a whole, then the
time of each asset's steps read back from the Dagster instance (summed over the shards).

It runs the whole job, about thirteen minutes on 2 cores with the embedded model.

.venv/bin/python benchmarks/demo_stages.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="demo-stages-") as folder:
        env = dict(os.environ, DAGSTER_HOME=folder)
        for name in ("REFLECTION_DUCKDB", "REFLECTION_ARTIFACTS", "REFLECTION_SHARDS"):
            env.pop(name, None)
        started = time.perf_counter()
        for args in (["datasets", "add", "sample", "bundled:sample"], ["run", "--dataset", "sample"]):
            subprocess.run([str(BIN / "reflection"), *args], env=env, check=True, cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        total = time.perf_counter() - started
        os.environ["DAGSTER_HOME"] = folder
        import dagster as dg

        instance = dg.DagsterInstance.get()
        seconds: dict[str, float] = defaultdict(float)
        steps: dict[str, int] = defaultdict(int)
        for run in instance.get_runs():
            for stat in instance.get_run_step_stats(run.run_id):
                if stat.start_time and stat.end_time:
                    seconds[stat.step_key] += stat.end_time - stat.start_time
                    steps[stat.step_key] += 1
    print("the main job on the bundled sample (128 records, 16 shards), embedded model, fresh home")
    print(f"{'stage':<26}{'steps':>6}{'wall s':>9}")
    for stage in ("raw_dataset", "reflected_instructions", "reflected_responses", "recycled_dataset",
                  "student_scores", "selective_dataset", "baseline_adapter", "recycled_adapter",
                  "selective_adapter", "benchmark_scores"):
        print(f"{stage:<26}{steps[stage]:>6}{seconds[stage]:>9.1f}")
    inside = sum(seconds.values())
    print(f"{'steps in all':<32}{inside:>9.1f}")
    print(f"{'the two commands, end to end':<32}{total:>9.1f}  (the rest: process start-up, Dagster runs, "
          "the one-off model conversion)")


if __name__ == "__main__":
    main()
