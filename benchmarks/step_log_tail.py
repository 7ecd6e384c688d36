"""What mirroring a step's captured output in a thread saves (dagster_private.
install_threaded_log_tail), side by side in one run.

Dagster's local compute log manager mirrors the captured stdout and stderr files with `tail -F`
and a Python watcher process per stream: four processes for each capture, which an in-process
run opens once for its steps. This runs --runs runs of a one-step job in process (as
`reflection run` runs a stage's shards), each trial a fresh process, alternating Dagster's
tail and the thread, and prints the wall time and the CPU time of the trial's process and its
children (the watchers are Python interpreters), with the ratios of the medians.

Run: .venv/bin/python benchmarks/step_log_tail.py [--runs 16] [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def child(runs: int, threaded: bool) -> None:
    import dagster as dg

    from reflection_assets import dagster_private

    if threaded:
        dagster_private.install_threaded_log_tail()

    @dg.op
    def step() -> None:
        print("the step prints a line")

    @dg.job
    def one():
        step()

    with tempfile.TemporaryDirectory() as folder, dg.instance_for_test(temp_dir=folder) as instance:
        before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        for _ in range(runs):
            assert one.execute_in_process(instance=instance).success
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
    print(json.dumps({"wall": wall, "cpu": cpu}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--child", choices=["tail", "thread"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.runs, args.child == "thread")
        return
    results: dict[str, list[dict]] = {"tail": [], "thread": []}
    for i in range(args.trials):
        for how in ("tail", "thread"):
            done = subprocess.run([sys.executable, __file__, "--child", how, "--runs", str(args.runs)],
                                  capture_output=True, text=True, cwd=REPO)
            if done.returncode:
                raise SystemExit(done.stdout + done.stderr)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results[how].append(result)
            print(f"trial {i + 1}: {how:6s} wall {result['wall']:6.2f} s, cpu {result['cpu']:6.2f} s", flush=True)
    median = {how: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu")} for how, rs in results.items()}
    print(f"{args.runs} one-step runs in process: median wall {median['tail']['wall']:.2f} s with Dagster's tail processes, "
          f"{median['thread']['wall']:.2f} s with a thread ({median['tail']['wall'] / median['thread']['wall']:.2f}x); "
          f"CPU {median['tail']['cpu']:.2f} s against {median['thread']['cpu']:.2f} s "
          f"({median['tail']['cpu'] / median['thread']['cpu']:.2f}x)")


if __name__ == "__main__":
    main()
