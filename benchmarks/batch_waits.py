"""Batch mode's wall time for a dataset of many shards: each shard's step waiting on its
own batches (what a shard launched from the UI or by the automation does) against
`reflection run`, which sends a stage's requests for every shard ahead and waits once per
stage. Side by side, in one run, against the scripted Batch API (tests/fakes/batch_server.py)
whose every batch takes --latency seconds, as a provider's does (minutes to hours there).

The two phases of V1 (reflected_instructions, reflected_responses) on --records records in
--shards shards, the paper profile (one call per record and phase). Each side starts from a
fresh database with raw_dataset materialized. It prints the wall time, the batches created
and the ratio.

.venv/bin/python benchmarks/batch_waits.py [--records 64] [--shards 8] [--latency 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--latency", type=float, default=3.0, help="seconds every batch takes")
    args = parser.parse_args()
    os.environ["REFLECTION_SHARDS"] = str(args.shards)  # read when the definitions load

    import dagster as dg

    from tests.conftest import alpaca_rows, write_json
    from tests.fakes import reflection_oracle
    from tests.fakes.batch_server import FakeBatchAPI

    stages = ["reflected_instructions", "reflected_responses"]
    results = {}
    for side in ("each shard waits on its own batches", "reflection run sends ahead"):
        with tempfile.TemporaryDirectory() as folder, FakeBatchAPI(
            responder=reflection_oracle.respond, latency_s=args.latency
        ) as server:
            home = Path(folder) / "home"
            os.environ.update({
                "DAGSTER_HOME": str(home),
                "REFLECTION_ORACLE_BACKEND": "openai", "REFLECTION_ORACLE_MODEL": "gpt-4o-mini",
                "REFLECTION_ORACLE_BASE_URL": server.base_url, "REFLECTION_ORACLE_API_KEY": "sk-bench-0123456789",
                "REFLECTION_ORACLE_MODE": "batch", "REFLECTION_ORACLE_BATCH_POLL_S": "0.25",
            })
            for name in ("REFLECTION_DUCKDB", "REFLECTION_ARTIFACTS"):
                os.environ.pop(name, None)
            from reflection_assets.cli import main as cli
            from reflection_assets.dagster_instance import ensure_instance
            from reflection_assets.definitions import JOB_FOR_PARTITIONS, RECORD_PARTITIONS, defs
            from reflection_assets.headless.runner import run_record_partitions

            source = write_json(Path(folder) / "b.json", alpaca_rows(args.records))
            assert cli(["datasets", "add", "b", str(source)]) == 0
            assert cli(["run", "--dataset", "b", "--select", "raw_dataset", "--log-level", "ERROR"]) == 0
            started = time.monotonic()
            if side.startswith("each"):
                outcomes = run_record_partitions(
                    ensure_instance(), defs, JOB_FOR_PARTITIONS[RECORD_PARTITIONS],
                    [dg.AssetKey(s) for s in stages], "b", None, "ERROR",
                )
                assert all(o.success for o in outcomes), [o.error for o in outcomes]
            else:
                assert cli(["run", "--dataset", "b", "--select", ",".join(stages), "--log-level", "ERROR"]) == 0
            wall = time.monotonic() - started
            results[side] = (wall, len(server.created), sum(server.answered.values()))
    print(f"\n{args.records} records in {args.shards} shards, two phases, every batch taking {args.latency:g} s:")
    print(f"  {'':<40} {'wall':>8} {'batches':>8} {'answered':>9}")
    for side, (wall, batches, answered) in results.items():
        print(f"  {side:<40} {wall:>7.1f}s {batches:>8} {answered:>9}")
    (slow, _, _), (fast, _, _) = results.values()
    print(f"  sending ahead is {slow / fast:.1f}x faster here; with hours per batch the ratio tends to "
          f"shards x waves / waves = {args.shards}")


if __name__ == "__main__":
    main()
