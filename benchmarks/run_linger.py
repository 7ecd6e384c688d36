"""What keeping the store open between a run's accesses saves (Database.lingering,
engines/store/storage.py), side by side in one run.

A shard's run reads and writes the store a dozen times or more (the dataset's registration,
the stage's version, its input, the reply cache's lookups and writes, its results, health
checks and summary), tens of milliseconds apart, and an open of the file costs 15 to 30 ms
on 2 cores. This times `reflection run --select recycled_dataset --upstream` of 40 real
records of the bundled sample (rows 67..106) on 16 shards against a scripted
OpenAI-compatible oracle on 127.0.0.1, each trial a fresh process and a fresh
DAGSTER_HOME, alternating: the store let go after every access (as before), and kept open
between a run's accesses (now). It prints each trial and the ratio of the medians.

Run: .venv/bin/python benchmarks/run_linger.py [--trials 3] [--shards 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def child(folder: Path, linger: bool) -> None:
    """One trial, in this process: register the slice, then time the run."""
    from reflection_assets.engines.store.storage import Database

    if not linger:  # the store let go after each access, as before
        Database.linger_start = lambda self: None  # type: ignore[method-assign]
        Database.linger_stop = lambda self: None  # type: ignore[method-assign]
    from reflection_assets.cli import main

    assert main(["datasets", "add", "h", str(folder / "h.json")]) == 0
    started = time.perf_counter()
    code = main(["run", "--dataset", "h", "--select", "recycled_dataset", "--upstream", "--log-level", "ERROR"])
    took = time.perf_counter() - started
    assert code == 0, code
    print(json.dumps({"seconds": took}))


def trial(linger: bool, shards: int, base_url: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = json.loads((REPO / "reflection_assets/data/sample_alpaca.json").read_text())[67:107]
        (folder / "h.json").write_text(json.dumps(rows))
        env = dict(os.environ, DAGSTER_HOME=str(folder / "home"), REFLECTION_SHARDS=str(shards),
                   REFLECTION_ARTIFACTS=str(folder / "artifacts"))
        env.pop("REFLECTION_DUCKDB", None)
        env.update({"REFLECTION_ORACLE_BACKEND": "openai", "REFLECTION_ORACLE_MODEL": "oracle-x",
                    "REFLECTION_ORACLE_BASE_URL": base_url, "REFLECTION_ORACLE_API_KEY": "sk-bench"})
        done = subprocess.run([sys.executable, __file__, "--child", str(folder), "--linger", str(int(linger))],
                              env=env, capture_output=True, text=True, cwd=REPO)
        if done.returncode:
            raise SystemExit(done.stdout + done.stderr)
        return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--linger", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, bool(args.linger))
        return

    from tests.fakes import reflection_oracle
    from tests.fakes.openai_server import FakeOpenAI

    times: dict[bool, list[float]] = {False: [], True: []}
    with FakeOpenAI(responder=reflection_oracle.respond, plan=reflection_oracle.plan) as server:
        for i in range(args.trials):
            for linger in (False, True):
                seconds = trial(linger, args.shards, server.base_url)
                times[linger].append(seconds)
                print(f"trial {i + 1}: {'kept open' if linger else 'let go   '} {seconds:6.2f} s", flush=True)
    before, after = statistics.median(times[False]), statistics.median(times[True])
    print(f"40 records, {args.shards} shards, raw_dataset to recycled_dataset: median {before:.2f} s let go after "
          f"each access, {after:.2f} s kept open between a run's accesses ({before / after:.2f}x)")


if __name__ == "__main__":
    main()
