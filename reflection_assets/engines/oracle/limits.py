"""Throughput controls for the oracle: adaptive concurrency, token buckets, backoff.

Ours rather than a library's, each for a reason measured side by side in
benchmarks/library_limits.py (2 cores, 2026-12-02):
- TokenBucket, not aiolimiter's AsyncLimiter: a request's tokens are known only as an upper
  estimate when it is sent (its prompt plus the whole max_tokens allowance), and providers
  count what it used. Ours gives the difference back when the reply reports its usage;
  AsyncLimiter can only take. At 2,000,000 tokens a minute, replies using 1,100 of an
  estimated 2,764 tokens: ours used 1,960,200 tokens a minute (98% of the limit),
  AsyncLimiter 785,400 (39%), 2.50x fewer requests.
- Retries in engines/oracle/client.py, not the openai SDK's `max_retries` nor tenacity: a
  retry there passes the dollar budget again, counts its 429 for AdaptiveConcurrency and the
  run's stats, and waits out its backoff without holding a worker. 2,000 requests with 10%
  answered 429 (Retry-After 0.5 s, 200 ms latency, 64 at a time): ours 9.4 s, the SDK's
  retries 11.3 s (1.19x), tenacity around the SDK 12.2 s (1.30x); with 600 requests, where
  the last retries' waits make most of the time, ours 5.0 s, the SDK 3.8 s, tenacity 4.6 s.
  Before that run's changes (a worker slept through its request's backoff, a flat 0.5 s of
  jitter on Retry-After, and the pool halved on two 429s among ten answers), ours took
  13.2 s on the 2,000 requests."""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections import deque


class AdaptiveConcurrency:
    """At most `limit` requests in flight: additive increase, multiplicative decrease.

    The limit halves when 429s are sustained (at least `throttle_share` of the last
    `window` answers, beyond chance: see _sustained; with `min_samples` seen since the last
    decrease and at most once per `cooldown_s`), and grows back by one per `limit`
    successes. Sporadic 429s are retried after their Retry-After without shrinking the
    pool: halving on each one would settle at about 2 x cooldown / latency requests in
    flight (measured: 10 instead of 64 at a 10% random 429 rate), eight times slower than
    the server allows."""

    def __init__(
        self,
        maximum: int,
        minimum: int = 1,
        cooldown_s: float = 1.0,
        window: int = 100,
        throttle_share: float = 0.2,
        min_samples: int = 10,
    ):
        self.maximum = maximum
        self.minimum = minimum
        self.limit = float(maximum)
        self.cooldown_s = cooldown_s
        self.throttle_share = throttle_share
        self.min_samples = min_samples
        self.in_flight = 0
        self.decreases = 0
        self._recent: deque[bool] = deque(maxlen=window)
        self._last_decrease = -1e9
        self._cond = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1

    def _sustained(self) -> bool:
        """Whether the recent answers show 429s at `throttle_share` or more, beyond what
        chance gives a lower rate: the count must exceed the share's expected count by two
        standard deviations (10 answers: 5 throttled; 100: 28). A bare share let a random 10%
        of 429s halve the pool whenever two fell among ten answers (benchmarks/library_limits.py)."""
        seen = len(self._recent)
        share = self.throttle_share
        return seen >= self.min_samples and sum(self._recent) >= share * seen + 2 * math.sqrt(seen * share * (1 - share))

    async def release(self, outcome: str) -> None:
        """outcome: 'ok', 'throttled' (429) or 'error'."""
        async with self._cond:
            self.in_flight -= 1
            throttled = outcome == "throttled"
            self._recent.append(throttled)
            now = time.monotonic()
            if throttled and self._sustained() and now - self._last_decrease >= self.cooldown_s:
                self.limit = max(float(self.minimum), self.limit / 2)
                self._last_decrease = now
                self.decreases += 1
                self._recent.clear()  # judge the new limit on fresh answers
            elif outcome == "ok" and self.limit < self.maximum:
                self.limit = min(float(self.maximum), self.limit + 1 / self.limit)
            self._cond.notify_all()


class TokenBucket:
    """`per_minute` units a minute, bursting up to a minute's worth. A request larger than
    the whole bucket waits for a full bucket rather than forever."""

    def __init__(self, per_minute: float):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = float(per_minute)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, amount: float) -> None:
        amount = min(amount, self.capacity)
        async with self._lock:  # first come, first served
            while True:
                self._refill()
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)

    def give_back(self, amount: float) -> None:
        """Reconcile an estimate with the usage the server reported (negative: take more)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


def backoff_delay(attempt: int, retry_after: float | None, base_s: float = 0.5, cap_s: float = 60.0) -> float:
    """The server's Retry-After plus up to a tenth of it (at most `base_s`) of jitter when it
    gave one, so that the requests it turned away together do not return together; otherwise
    exponential backoff with full jitter, capped. (A flat `base_s` of jitter made a 0.5 s
    Retry-After wait 0.75 s on average: benchmarks/library_limits.py.)"""
    if retry_after is not None:
        return min(cap_s * 5, retry_after + random.uniform(0, min(base_s, retry_after / 10)))
    return random.uniform(0, min(cap_s, base_s * 2**attempt))


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds or as an HTTP date; also retry-after-ms."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())


def duration(seconds: float) -> str:
    """An ETA or a wall time as 3m05s or 1h20m."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
