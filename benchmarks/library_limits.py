"""Our rate limits and retries against the libraries that would replace them, side by side.

1. Tokens per minute. A provider counts a request's prompt plus its *actual* completion
   against TPM; before sending, a client only knows an upper estimate (the prompt plus the
   whole max_tokens allowance). Our TokenBucket (engines/oracle/limits.py) takes the
   estimate, then gives back the difference once the reply reports its usage; aiolimiter's
   AsyncLimiter (a leaky bucket) can only take. Both pace 64 workers for --window seconds,
   starting empty, under the same TPM; each line prints the tokens actually used per
   minute, against the limit.
2. Retries of a 429 storm. A fake OpenAI-compatible server (tests/fakes/openai_server.py, its
   own process) answers --rate-429 of the requests with 429 and Retry-After. N requests go
   through our OracleClient (its own retry loop: Retry-After, backoff, AdaptiveConcurrency,
   budget admission and per-attempt accounting, every reply stored in DuckDB), then through
   the openai SDK's own retries (max_retries, which also honours Retry-After) under a
   semaphore of the same concurrency, then through tenacity around the SDK call. Each line
   prints wall time, requests that failed, and what the client knew of the 429s.

.venv/bin/python benchmarks/library_limits.py [--window 10] [--n 2000] [--rate-429 0.1]

aiolimiter and tenacity are not dependencies of the package: `make bench` installs them
(the `bench` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import openai
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.oracle_throughput import ours, start_server  # noqa: E402
from reflection_assets.engines.oracle.limits import TokenBucket  # noqa: E402


async def paced(take, give_back, window_s: float, estimate: int, used: int, latency_s: float) -> int:
    """Requests 64 workers complete in window_s under a limiter: take(estimate) before a
    call, give_back(estimate - used) after it (a no-op for a limiter that cannot)."""
    done = 0
    deadline = time.monotonic() + window_s

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await take(estimate)
            await asyncio.sleep(latency_s)
            give_back(estimate - used)
            if time.monotonic() < deadline:
                done += 1

    tasks = [asyncio.create_task(worker()) for _ in range(64)]
    await asyncio.sleep(window_s)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return done


async def ours_tpm(tpm: int, window_s: float, estimate: int, used: int, latency_s: float) -> int:
    bucket = TokenBucket(tpm)
    bucket.level = 0.0  # start empty: the window measures the steady rate, not the first burst
    return await paced(bucket.take, bucket.give_back, window_s, estimate, used, latency_s)


async def aiolimiter_tpm(tpm: int, window_s: float, estimate: int, used: int, latency_s: float) -> int:
    limiter = AsyncLimiter(tpm, 60)
    await limiter.acquire(tpm)  # start empty, as above
    return await paced(limiter.acquire, lambda amount: None, window_s, estimate, used, latency_s)


def ours_retries(base_url: str, n: int, concurrency: int, folder: Path) -> tuple[int, str]:
    client = ours(base_url, n, concurrency, folder)  # oracle_throughput's: every request must succeed
    stats = client.stats
    return 0, (
        f"{stats.throttled} 429s seen and counted, {stats.retries} retries, "
        f"{stats.concurrency_decreases} concurrency decreases; replies stored"
    )


async def sdk_retries(base_url: str, n: int, concurrency: int) -> tuple[int, str]:
    gate = asyncio.Semaphore(concurrency)
    failed = 0
    async with openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=10) as client:

        async def one(i: int) -> None:
            nonlocal failed
            async with gate:
                try:
                    await client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": f"[sdk] rewrite instruction number {i}"}]
                    )
                except openai.APIError:
                    failed += 1

        await asyncio.gather(*(one(i) for i in range(n)))
    return failed, "429s retried inside the SDK: the caller sees none of them"


async def tenacity_retries(base_url: str, n: int, concurrency: int) -> tuple[int, str]:
    gate = asyncio.Semaphore(concurrency)
    failed = 0
    retried = 0

    def wait(state) -> float:  # Retry-After when the server gave one, else jittered backoff
        exc = state.outcome.exception()
        header = getattr(getattr(exc, "response", None), "headers", {}).get("retry-after")
        return float(header) if header else wait_random_exponential(multiplier=0.5, max=60)(state)

    async with openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0) as client:

        async def one(i: int) -> None:
            nonlocal failed, retried
            async with gate:
                try:
                    async for attempt in AsyncRetrying(
                        retry=retry_if_exception(lambda e: isinstance(e, (openai.RateLimitError, openai.APIConnectionError))),
                        wait=wait, stop=stop_after_attempt(11), reraise=True,
                    ):
                        with attempt:
                            retried += attempt.retry_state.attempt_number > 1
                            await client.chat.completions.create(
                                model="gpt-4o-mini",
                                messages=[{"role": "user", "content": f"[tenacity] rewrite instruction number {i}"}],
                            )
                except openai.APIError:
                    failed += 1

        await asyncio.gather(*(one(i) for i in range(n)))
    return failed, f"{retried} retries, the semaphore held through each wait"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=10.0, help="seconds each TPM limiter is measured")
    parser.add_argument("--tpm", type=int, default=2_000_000)
    parser.add_argument("--prompt-tokens", type=int, default=700, help="a paper-profile phase-1 prompt")
    parser.add_argument("--max-tokens", type=int, default=2048, help="the endpoint default allowance")
    parser.add_argument("--completion-tokens", type=int, default=400, help="what a reply really uses")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--jitter", type=float, default=0.05)
    parser.add_argument("--cap", type=int, default=64)
    parser.add_argument("--rate-429", type=float, default=0.1)
    parser.add_argument("--retry-after", type=float, default=0.5)
    args = parser.parse_args()

    estimate = args.prompt_tokens + 16 + args.max_tokens  # OracleRequest.estimated_tokens for two messages
    used = args.prompt_tokens + args.completion_tokens
    print(
        f"1. TPM {args.tpm:,}: each request estimated at {estimate:,} tokens before sending, "
        f"{used:,} used ({args.window:.0f} s each, 64 workers, starting empty)"
    )
    rows = []
    for name, fn in (("ours (TokenBucket, gives back)", ours_tpm), ("aiolimiter.AsyncLimiter", aiolimiter_tpm)):
        done = asyncio.run(fn(args.tpm, args.window, estimate, used, 0.05))
        rows.append((name, done, done * used * 60 / args.window))
    for name, done, per_minute in rows:
        print(
            f"   {name:<32}{done:>7} requests{per_minute:>13,.0f} tokens/min used ({per_minute / args.tpm:.0%} of "
            f"the limit){rows[0][1] / max(done, 1):>7.2f}x fewer than ours" if done != rows[0][1] else
            f"   {name:<32}{done:>7} requests{per_minute:>13,.0f} tokens/min used ({per_minute / args.tpm:.0%} of the limit)"
        )

    print(
        f"2. {args.n} requests, {args.rate_429:.0%} answered 429 with Retry-After {args.retry_after} s, latency "
        f"{args.latency * 1000:.0f}±{args.jitter * 1000:.0f} ms, concurrency {args.concurrency}, server cap {args.cap}"
    )
    proc, base_url = start_server(args)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "warm").mkdir()
            ours_retries(base_url, 20, args.concurrency, Path(tmp) / "warm")  # imports, first DuckDB open
            (Path(tmp) / "ours").mkdir()
            results = []
            for name, run in (
                ("ours (OracleClient)", lambda: ours_retries(base_url, args.n, args.concurrency, Path(tmp) / "ours")),
                ("openai SDK max_retries", lambda: asyncio.run(sdk_retries(base_url, args.n, args.concurrency))),
                ("tenacity around the SDK", lambda: asyncio.run(tenacity_retries(base_url, args.n, args.concurrency))),
            ):
                started = time.perf_counter()
                failed, note = run()
                results.append((name, time.perf_counter() - started, failed, note))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    for name, wall, failed, note in results:
        print(f"   {name:<26}{wall:>7.1f} s ({wall / results[0][1]:.2f}x ours){failed:>4} failed; {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
