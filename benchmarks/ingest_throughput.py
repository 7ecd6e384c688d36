"""Ingest throughput: 52,000 generated Alpaca records (a third with inputs, a few bad rows)
through `raw_dataset`, every shard, with the same runner as `reflection run`.

Prints records per second for the whole materialization, and the split between parsing
the source once and the per-shard Dagster runs. Run: .venv/bin/python benchmarks/ingest_throughput.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

N_RECORDS = int(os.environ.get("BENCH_RECORDS", "52000"))


def generate(path: Path, n: int) -> None:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rows = []
    for i in range(n):
        text = " ".join(words[(i + j) % len(words)] for j in range(12))
        rows.append(
            {
                "instruction": f"Explain record {i}: {text}?",
                "input": f"Context {i}: {text}" if i % 3 == 0 else "",
                "output": f"Record {i} means {text}. " * 4,
            }
        )
    for i in range(0, n, 1000):  # a few unusable rows, as real data has
        rows[i] = {"instruction": rows[i]["instruction"], "output": ""}
    path.write_text(json.dumps(rows))


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    os.environ["DAGSTER_HOME"] = str(work / "home")
    import dagster as dg

    from reflection_assets.assets.partitions import SHARD_COUNT
    from reflection_assets.definitions import defs
    from reflection_assets.engines.data.ingest import stage_version
    from reflection_assets.dagster_instance import ensure_instance
    from reflection_assets.headless.runner import run_record_partitions, sync_dataset_partitions
    from reflection_assets.assets.resources import StorageResource

    try:
        source = work / "alpaca52k.json"
        generate(source, N_RECORDS)
        print(f"{N_RECORDS} records, {source.stat().st_size / 1e6:.1f} MB, {SHARD_COUNT} shards")
        instance = ensure_instance()
        storage = StorageResource()
        spec = storage.registry().add("bench", str(source))
        sync_dataset_partitions(instance, ["bench"])

        start = time.perf_counter()
        outcomes = run_record_partitions(
            instance, defs, "recycle_shards", [dg.AssetKey("raw_dataset")], "bench", None, "WARNING"
        )
        total = time.perf_counter() - start
        assert all(o.success for o in outcomes), [o.error for o in outcomes if not o.success]
        rows = sum(o.rows["raw_dataset"] for o in outcomes)

        # The parse-once share, measured alone on a fresh database.
        parse_db = StorageResource(database=str(work / "parse_only.duckdb")).db()
        start = time.perf_counter()
        stage_version(parse_db, spec, SHARD_COUNT, 100_000)
        parse = time.perf_counter() - start

        print(f"ingested {rows} records ({N_RECORDS - rows} rejected) in {total:.1f} s")
        print(f"  parse + normalize + stage once: {parse:.1f} s ({N_RECORDS / parse:,.0f} records/s)")
        print(f"  {SHARD_COUNT} shard runs: {(total - parse) / SHARD_COUNT:.2f} s each")
        print(f"records per second, whole materialization: {N_RECORDS / total:,.0f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
