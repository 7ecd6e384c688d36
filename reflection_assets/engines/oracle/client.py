"""The oracle client: `complete_many(requests)` streams one reply per distinct request.

Cached replies come first and cost nothing. The rest are sent by a pool of workers under
an adaptive concurrency limit and request/token buckets, each request on its own (no batch
waits for its slowest member, a failure never re-sends a success), retried with backoff
when the failure is transient, stopped by the dollar budget, and written to the cache
before they reach the caller."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from reflection_assets.engines.oracle.backends import make_backend
from reflection_assets.engines.oracle.cache import CacheWriter, OracleCache
from reflection_assets.engines.oracle.limits import AdaptiveConcurrency, TokenBucket, backoff_delay
from reflection_assets.engines.oracle.pricing import cost_usd, price_for
from reflection_assets.engines.oracle.replies import BackendError, ErrorKind, OracleReply
from reflection_assets.engines.oracle.settings import OracleSettings
from reflection_assets.engines.storage import Database
from reflection_assets.method.requests import Message, OracleRequest

_DONE = object()


@dataclass
class OracleStats:
    requested: int = 0  # distinct requests asked for
    cached: int = 0  # answered from the cache, nothing sent
    sent: int = 0  # distinct requests that went to the backend
    succeeded: int = 0
    failed: int = 0
    budget_stopped: int = 0
    retries: int = 0
    throttled: int = 0  # 429 answers
    truncated: int = 0  # finish_reason == "length", cached or not
    prompt_tokens: int = 0  # of replies paid for in this run
    completion_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    concurrency_decreases: int = 0

    def as_metadata(self) -> dict[str, float | int]:
        return {f"oracle/{f.name}": getattr(self, f.name) for f in fields(self)}


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class OracleClient:
    def __init__(
        self,
        settings: OracleSettings,
        db: Database,
        artifacts: str | Path,
        log: logging.Logger | None = None,
        backend: object | None = None,
    ):
        self.settings = settings
        self.cache = OracleCache(db)
        self.backend = backend or make_backend(settings, artifacts)
        self.log = log or logging.getLogger("reflection.oracle")
        self.price = price_for(
            settings.backend, settings.model, settings.price_input_per_mtok, settings.price_output_per_mtok
        )
        self.stats = OracleStats()
        self.budget_exhausted = False
        if settings.budget_usd is not None and self.price is None:
            self.log.warning(
                f"no price known for model {settings.model!r}: the budget cannot be enforced; "
                "set REFLECTION_ORACLE_PRICE_INPUT and _PRICE_OUTPUT ($ per 1M tokens)"
            )

    def request(
        self,
        messages: Sequence[Message],
        prompt_version: str,
        stop: Sequence[str] = (),
        constraint: str | None = None,
        max_tokens: int | None = None,
    ) -> OracleRequest:
        """A request with these settings' sampling; `max_tokens` lowers the reply's limit for
        this call (a prompt profile's per-section limit), never raises it."""
        sampling = self.settings.sampling
        if max_tokens is not None and max_tokens < sampling.max_tokens:
            sampling = dataclasses.replace(sampling, max_tokens=max_tokens)
        return OracleRequest(tuple(messages), sampling, prompt_version, tuple(stop), constraint)

    def fingerprint(self, prompt_version: str) -> str:
        return self.settings.fingerprint(prompt_version)

    # -- the one entry point -------------------------------------------------------------

    def complete_many(self, requests: Iterable[OracleRequest]) -> Iterator[OracleReply]:
        """One reply per distinct request key, cached ones first, the rest as they are
        stored. Failed requests come back with `error_kind` set; nothing raises for them."""
        started = time.monotonic()
        replayed = self.cache.replay_journals()
        if replayed:
            self.log.info(f"oracle: stored {replayed} replies journaled by a run that was killed before writing them")
        unique = {r.key: r for r in requests}
        self.stats.requested += len(unique)
        cached = self.cache.lookup(unique)
        self.stats.cached += len(cached)
        for reply in cached.values():
            self.stats.truncated += reply.truncated
            yield reply
        pending = [r for key, r in unique.items() if key not in cached]
        if pending:
            self.log.info(f"oracle: {len(cached)} of {len(unique)} requests cached, sending {len(pending)}")
            yield from self._send(pending)
        self.stats.wall_s += time.monotonic() - started

    # -- sending -----------------------------------------------------------------------

    def _send(self, pending: list[OracleRequest]) -> Iterator[OracleReply]:
        out: queue.Queue = queue.Queue()
        writer = CacheWriter(self.cache, self.settings.flush_interval_s, lambda batch: [out.put(r) for r in batch])
        cancel = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._send_all(pending, writer, cancel))
            except BaseException as exc:
                failure.append(exc)
            finally:
                try:
                    writer.close()
                except BaseException as exc:
                    failure.append(exc)
                out.put(_DONE)

        thread = threading.Thread(target=run, name="oracle-sender", daemon=True)
        thread.start()
        try:
            while (item := out.get()) is not _DONE:
                yield item
        finally:
            cancel.set()  # the caller stopped early: in-flight replies are still stored
            thread.join()
        if failure:
            raise failure[0]

    async def _send_all(self, pending: list[OracleRequest], writer: CacheWriter, cancel: threading.Event) -> None:
        settings = self.settings
        concurrency = getattr(self.backend, "concurrency", settings.max_concurrency)
        limiter = AdaptiveConcurrency(concurrency)
        rpm = TokenBucket(settings.rpm) if settings.rpm else None
        tpm = TokenBucket(settings.tpm) if settings.tpm else None
        work: asyncio.Queue[OracleRequest] = asyncio.Queue()
        # Short prompts first lets the local backend batch similar lengths together.
        for request in sorted(pending, key=OracleRequest.prompt_chars):
            work.put_nowait(request)
        progress = _Progress(len(pending), self, limiter)
        reserved = [0.0]  # worst-case cost of requests in flight, for the budget

        async def one(request: OracleRequest) -> None:
            attempt = 0
            while True:
                worst = cost_usd(self.price, request.prompt_chars() // 4, settings.max_tokens)
                if settings.budget_usd is not None and (
                    self.budget_exhausted
                    or self.stats.cost_usd + reserved[0] + worst > settings.budget_usd
                ):
                    if not self.budget_exhausted:
                        self.log.warning(
                            f"oracle: budget of ${settings.budget_usd:.2f} reached "
                            f"(${self.stats.cost_usd:.4f} spent, all replies kept); "
                            "no further requests are sent"
                        )
                    self.budget_exhausted = True
                    self.stats.budget_stopped += 1
                    writer.add(request, self._failure(request, ErrorKind.BUDGET, "not sent: budget reached", attempt))
                    progress.done += 1
                    return
                if rpm:
                    await rpm.take(1)
                estimate = request.estimated_tokens()
                if tpm:
                    await tpm.take(estimate)
                reserved[0] += worst
                await limiter.acquire()
                started = time.monotonic()
                if attempt == 0:
                    self.stats.sent += 1
                outcome = "error"
                try:
                    reply = await self.backend.complete(request)  # type: ignore[attr-defined]
                    outcome = "ok"
                except BackendError as exc:
                    error = exc
                    if exc.throttled:
                        outcome = "throttled"
                        self.stats.throttled += 1
                finally:
                    await limiter.release(outcome)
                    reserved[0] -= worst
                latency = time.monotonic() - started
                if outcome == "ok":
                    if tpm:
                        tpm.give_back(estimate - reply.prompt_tokens - reply.completion_tokens)
                    cost = cost_usd(self.price, reply.prompt_tokens, reply.completion_tokens)
                    self.stats.succeeded += 1
                    self.stats.prompt_tokens += reply.prompt_tokens
                    self.stats.completion_tokens += reply.completion_tokens
                    self.stats.cost_usd += cost
                    self.stats.truncated += reply.finish_reason == "length"
                    writer.add(
                        request,
                        OracleReply(
                            request_key=request.key,
                            fingerprint=request.fingerprint,
                            text=reply.text,
                            finish_reason=reply.finish_reason,
                            prompt_tokens=reply.prompt_tokens,
                            completion_tokens=reply.completion_tokens,
                            cost_usd=cost,
                            latency_s=latency,
                            attempts=attempt + 1,
                        ),
                    )
                    progress.done += 1
                    return
                if not error.transient or attempt >= settings.max_retries:
                    kind = ErrorKind.TRANSIENT if error.transient else ErrorKind.PERMANENT
                    note = f" after {attempt + 1} attempts" if error.transient else ""
                    writer.add(request, self._failure(request, kind, f"{error}{note}", attempt + 1, error.status))
                    self.stats.failed += 1
                    progress.done += 1
                    if not error.transient:
                        self.log.warning(f"oracle: request {request.key[:12]} failed for good: {error}")
                    return
                attempt += 1
                self.stats.retries += 1
                await asyncio.sleep(backoff_delay(attempt, error.retry_after))

        async def worker() -> None:
            while not cancel.is_set():
                try:
                    request = work.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await one(request)

        async with self.backend:  # type: ignore[attr-defined]
            ticker = asyncio.create_task(progress.tick(settings.progress_interval_s))
            try:
                await asyncio.gather(*(worker() for _ in range(min(concurrency, len(pending)))))
            finally:
                ticker.cancel()
                self.stats.concurrency_decreases += limiter.decreases
        progress.report(final=True)

    def _failure(
        self, request: OracleRequest, kind: str, message: str, attempts: int, status: int | None = None
    ) -> OracleReply:
        return OracleReply(
            request_key=request.key,
            fingerprint=request.fingerprint,
            text=None,
            attempts=attempts,
            error_kind=kind,
            error=message,
            status=status,
        )


class _Progress:
    """A log line at a steady cadence: done/total, rate, ETA, tokens, cost, concurrency."""

    def __init__(self, total: int, client: OracleClient, limiter: AdaptiveConcurrency):
        self.total = total
        self.done = 0
        self.client = client
        self.limiter = limiter
        self.started = time.monotonic()

    def report(self, final: bool = False) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        stats = self.client.stats
        tokens = stats.prompt_tokens + stats.completion_tokens
        self.client.log.info(
            f"oracle: {self.done}/{self.total} {'done' if final else 'answered'} "
            f"({self.done / self.total:.0%}), {rate:.1f} req/s, "
            + (f"took {_duration(elapsed)}" if final else f"ETA {_duration(eta) if eta != float('inf') else '?'}")
            + f", {tokens:,} tokens, ${stats.cost_usd:.4f}, {stats.retries} retries, "
            f"{stats.failed} failed, concurrency {int(self.limiter.limit)}"
        )

    async def tick(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.report()
