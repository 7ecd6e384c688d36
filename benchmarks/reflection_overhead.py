"""The reflection pipeline's own overhead per record: everything but the oracle.

5,000 generated records go through reflected_instructions and reflected_responses,
materialized through Dagster like `reflection run`, against the fake OpenAI-compatible
server (its own process) at zero latency, answering with well-formed reflections. Printed
side by side, per record and stage:
  - first run:   the stage's wall time, minus the bare openai SDK sending the same number
                 of requests at the same concurrency (the oracle's share at zero latency);
  - cached run:  re-materializing the stage, every reply from the cache: no oracle at all.
Shards: 2 of 2,500 records (REFLECTION_SHARDS=2), near the ~3,250 of a 52k set in 16.

.venv/bin/python benchmarks/reflection_overhead.py [--n 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("REFLECTION_SHARDS", "2")


def start_server() -> tuple[subprocess.Popen, str]:
    code = (
        "import sys; from tests.fakes.openai_server import FakeOpenAI; "
        "from tests.fakes.reflection_oracle import respond; "
        "s = FakeOpenAI(latency_s=0, responder=respond).__enter__(); print(s.port, flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}/v1"


async def bare_sdk(base_url: str, n: int, concurrency: int, prompt: str) -> None:
    import openai

    gate = asyncio.Semaphore(concurrency)
    async with openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0) as client:

        async def one(i: int) -> None:
            async with gate:
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": prompt.replace("#", str(i))}]
                )

        await asyncio.gather(*(one(i) for i in range(n)))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="reflect-bench-"))
    proc, base_url = start_server()
    os.environ.update(
        DAGSTER_HOME=str(work / "home"),
        REFLECTION_ORACLE_BACKEND="openai",
        REFLECTION_ORACLE_MODEL="gpt-4o-mini",
        REFLECTION_ORACLE_BASE_URL=base_url,
        REFLECTION_ORACLE_API_KEY="bench",
        REFLECTION_ORACLE_MAX_CONCURRENCY=str(args.concurrency),
    )
    import dagster as dg

    from reflection_assets.assets.resources import StorageResource
    from reflection_assets.definitions import defs
    from reflection_assets.method.prompts import instruction_reflection
    from reflection_assets.dagster_instance import ensure_instance
    from reflection_assets.headless.runner import run_record_partitions, sync_dataset_partitions

    try:
        source = work / "records.json"
        source.write_text(json.dumps([
            {"instruction": f"Explain topic {i} to a beginner.", "input": "" if i % 3 else f"notes {i}",
             "output": f"Topic {i} is about something. " * 3}
            for i in range(args.n)
        ]))
        instance = ensure_instance()
        StorageResource().registry().add("bench", str(source))
        sync_dataset_partitions(instance, ["bench"])

        def stage(name: str) -> float:
            start = time.perf_counter()
            outcomes = run_record_partitions(instance, defs, "recycle_shards", [dg.AssetKey(name)], "bench", None, "WARNING")
            assert all(o.success for o in outcomes), [o.error for o in outcomes if not o.success]
            return time.perf_counter() - start

        stage("raw_dataset")
        first = {name: stage(name) for name in ("reflected_instructions", "reflected_responses")}
        cached = {name: stage(name) for name in ("reflected_instructions", "reflected_responses")}
        prompt = instruction_reflection("Explain topic # to a beginner.", "", "Topic # is about something.")[1][1]
        start = time.perf_counter()
        asyncio.run(bare_sdk(base_url, args.n, args.concurrency, prompt))
        sdk = time.perf_counter() - start
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    n = args.n
    print(f"{n} records, 2 shards, fake oracle at zero latency, concurrency {args.concurrency}")
    print(f"bare openai SDK, {n} requests: {sdk:.1f} s ({sdk / n * 1000:.2f} ms/request): the oracle's share")
    print(f"{'stage':<24}{'first run':>11}{'overhead/record':>17}{'cached run':>12}{'per record':>12}")
    for name in first:
        overhead = max(0.0, first[name] - sdk) / n * 1000
        print(f"{name:<24}{first[name]:>10.1f}s{overhead:>14.2f} ms{cached[name]:>11.1f}s{cached[name] / n * 1000:>9.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
