"""Oracle throughput: our client against the two ways research scripts call an oracle.

A fake OpenAI-compatible server (its own process, so it does not share our GIL) answers
every request after a fixed latency with jitter, serving at most --cap requests at a time.
N requests go three ways, side by side in one run:
  1. one at a time;
  2. the official Reflection-Tuning pattern: batches of 10 sent together, each batch
     waiting for its slowest request, any error re-sending the whole batch after a sleep
     that doubles from 10 s;
  3. our OracleClient at concurrency C, writing every reply to a DuckDB cache.
Each line prints wall time and its ratio to the ideal N * L / C. The two baselines are
linear in N, so where a full run would take many minutes they are measured on a sample
(printed) and scaled. Run it again with --rate-429 0.1 for a 10% injected 429 rate.

.venv/bin/python benchmarks/oracle_throughput.py [--n 2000] [--concurrency 64] [--rate-429 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reflection_assets.engines.oracle.client import OracleClient  # noqa: E402
from reflection_assets.engines.oracle.settings import OracleSettings  # noqa: E402
from reflection_assets.engines.store.storage import Database  # noqa: E402


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable, "-m", "tests.fakes.openai_server",
        "--latency", str(args.latency), "--jitter", str(args.jitter), "--cap", str(args.cap),
        "--rate-429", str(args.rate_429), "--retry-after", str(args.retry_after),
    ]
    proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/v1"


def messages(tag: str, i: int) -> list[dict]:
    return [{"role": "user", "content": f"[{tag}] rewrite instruction number {i}"}]


async def one_at_a_time(base_url: str, n: int) -> None:
    async with openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0) as client:
        for i in range(n):
            delay = 1.0
            while True:  # a fair baseline retries a 429 instead of crashing
                try:
                    await client.chat.completions.create(model="gpt-4o-mini", messages=messages("seq", i))
                    break
                except openai.RateLimitError:
                    await asyncio.sleep(delay)
                    delay *= 2


async def official_batches(base_url: str, n: int) -> None:
    async with openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0) as client:
        for start in range(0, n, 10):
            batch = range(start, min(start + 10, n))
            sleep = 10.0
            while True:
                try:
                    await asyncio.gather(
                        *(client.chat.completions.create(model="gpt-4o-mini", messages=messages("b10", i)) for i in batch)
                    )
                    break
                except openai.APIError:
                    await asyncio.sleep(sleep)  # then the whole batch again, successes included
                    sleep *= 2


def ours(base_url: str, n: int, concurrency: int, folder: Path) -> OracleClient:
    settings = OracleSettings(
        backend="openai", model="gpt-4o-mini", base_url=base_url, api_key="bench",
        max_concurrency=concurrency, max_retries=10, progress_interval_s=3600,
    )
    client = OracleClient(settings, Database(folder / "store.duckdb"), folder)
    requests = [client.request([("user", f"[ours] rewrite instruction number {i}")], "bench") for i in range(n)]
    replies = list(client.complete_many(requests))
    assert len(replies) == n and all(r.ok for r in replies), "every request must succeed"
    return client


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request at the server")
    parser.add_argument("--jitter", type=float, default=0.05, help="uniform +- seconds")
    parser.add_argument("--cap", type=int, default=64, help="server-side concurrency cap")
    parser.add_argument("--rate-429", type=float, default=0.0)
    parser.add_argument("--retry-after", type=float, default=0.5)
    parser.add_argument("--baseline-seconds", type=float, default=60.0,
                        help="measure each baseline on as many requests as fit in about this long")
    args = parser.parse_args()

    n, c, latency = args.n, args.concurrency, args.latency
    ideal = n * latency / min(c, args.cap)
    proc, base_url = start_server(args)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # warm-up: imports, connection pools, first DuckDB open
            (Path(tmp) / "warm").mkdir()
            ours(base_url, 20, c, Path(tmp) / "warm")

            seq_n = min(n, max(10, int(args.baseline_seconds / (latency * (1 + 3 * args.rate_429)))))
            seq_s, _ = timed(lambda: asyncio.run(one_at_a_time(base_url, seq_n)))
            b10_n = min(n, max(10, int(args.baseline_seconds / (latency + args.jitter) * 10) // 10 * 10))
            if args.rate_429:
                b10_n = min(b10_n, 20)  # each failed batch sleeps 10 s, 20 s, ...
            b10_s, _ = timed(lambda: asyncio.run(official_batches(base_url, b10_n)))
            (Path(tmp) / "ours").mkdir()
            ours_s, client = timed(ours, base_url, n, c, Path(tmp) / "ours")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)

    rows = [
        ("one at a time", seq_n, seq_s * n / seq_n),
        ("batches of 10 (official)", b10_n, b10_s * n / b10_n),
        (f"ours, C={c}", n, ours_s),
    ]
    print(
        f"N={n} requests, latency {latency * 1000:.0f}±{args.jitter * 1000:.0f} ms, server cap {args.cap}, "
        f"429 rate {args.rate_429:.0%} (Retry-After {args.retry_after} s); ideal N*L/C = {ideal:.1f} s"
    )
    print(f"{'pattern':<26}{'measured on':>12}{'wall for N':>12}{'x ideal':>9}{'ours faster':>13}")
    for name, measured, wall in rows:
        print(f"{name:<26}{measured:>8} req{wall:>11.1f}s{wall / ideal:>8.2f}x{wall / ours_s:>12.1f}x")
    stats = client.stats
    print(
        f"ours: {stats.sent} sent, {stats.retries} retries, {stats.throttled} answered 429, "
        f"concurrency decreased {stats.concurrency_decreases} times; every reply stored in DuckDB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
