"""A backfill of every shard through the daemon: the store held per step (a one-slot pool
around every step, as before 2026-12, REFLECTION_STORE_POOL=duckdb) against the store held
per read or write (the default), side by side in one run.

Each side: a fresh DAGSTER_HOME, `dagster dev` (webserver, daemon, code server), a dataset
of --records records in --shards shards, and one backfill of raw_dataset and
reflected_instructions over every shard, launched through GraphQL as the UI does, against a
scripted OpenAI-compatible oracle on 127.0.0.1 at --latency-s a request. The clock runs from
the launch to the last run's end; the daemon runs up to max_concurrent_runs (3) at a time.

Run: .venv/bin/python benchmarks/daemon_backfill.py [--records 2000] [--shards 16] [--latency-s 0.5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import alpaca_rows, write_json  # noqa: E402
from tests.e2e.dagster_dev import BIN, backfill_runs, dagster_dev, launch_backfill  # noqa: E402
from tests.fakes import reflection_oracle  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402


def backfill(folder: Path, args: argparse.Namespace, server: FakeOpenAI, store_pool: str | None) -> tuple[float, int, int]:
    """(seconds from launch to the last run's end, runs succeeded, replies bought)."""
    env = dict(
        os.environ,
        DAGSTER_HOME=str(folder / "home"),
        REFLECTION_SHARDS=str(args.shards),
        REFLECTION_ORACLE_BACKEND="openai",
        REFLECTION_ORACLE_MODEL="gpt-4o-mini",
        REFLECTION_ORACLE_BASE_URL=server.base_url,
        REFLECTION_ORACLE_API_KEY="sk-bench-backfill-0123",
        REFLECTION_ORACLE_MAX_CONCURRENCY="16",
    )
    for name in ("REFLECTION_DUCKDB", "REFLECTION_ARTIFACTS", "REFLECTION_STORE_POOL"):
        env.pop(name, None)
    if store_pool:
        env["REFLECTION_STORE_POOL"] = store_pool
    seed = "held-per-step" if store_pool else "held-per-write"  # distinct records: no cache hits across sides
    source = write_json(folder / "d.json", alpaca_rows(args.records, seed=seed))
    subprocess.run([str(BIN / "reflection"), "datasets", "add", "d", str(source)], env=env, check=True,
                   capture_output=True, timeout=300)
    answered = server.answered
    with dagster_dev(env) as port:
        shards = [f"d|{i:02d}" for i in range(args.shards)]
        started = time.monotonic()
        backfill_id = launch_backfill(port, shards, ["raw_dataset", "reflected_instructions"])
        while True:
            runs = backfill_runs(port, backfill_id)
            done = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
            if len(runs) == len(shards) and len(done) == len(shards):
                break
            if time.monotonic() - started > args.timeout_s:
                raise SystemExit(f"the backfill did not finish in {args.timeout_s:.0f} s: {len(done)} of {len(shards)} runs")
            time.sleep(1)
        seconds = time.monotonic() - started
    return seconds, sum(r["status"] == "SUCCESS" for r in runs), server.answered - answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--latency-s", type=float, default=0.5)
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args()
    print(f"{args.records} records in {args.shards} shards, {args.latency_s} s a request, 16 in flight a run")
    results = {}
    with FakeOpenAI(latency_s=args.latency_s, responder=reflection_oracle.respond, plan=reflection_oracle.plan) as server:
        for label, pool in (("store held per step (one-slot pool)", "duckdb"), ("store held per read or write", None)):
            with tempfile.TemporaryDirectory() as tmp:
                results[label] = backfill(Path(tmp), args, server, pool)
            seconds, succeeded, bought = results[label]
            print(f"{label:38s} {seconds:7.1f} s  ({succeeded} of {args.shards} runs succeeded, {bought} replies)")
    (before, *_), (after, *_) = results.values()
    print(f"speed-up: {before / after:.2f}x")


if __name__ == "__main__":
    main()
