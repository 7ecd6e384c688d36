"""The oracle client: `complete_many(requests)` streams one reply per distinct request.

Cached replies come first and cost nothing. The rest are sent by a pool of workers under
an adaptive concurrency limit and request/token buckets, each request on its own (no batch
waits for its slowest member, a failure never re-sends a success), retried with backoff
when the failure is transient, stopped by the dollar budget, and written to the cache
before they reach the caller. In batch mode they go through the Batch API instead
(batch.py), with the same guarantees."""

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

from reflection_assets.engines.oracle.backends import Backend, make_backend
from reflection_assets.engines.oracle.batch import BatchRunner, BatchScope
from reflection_assets.engines.oracle.cache import CacheWriter, OracleCache
from reflection_assets.engines.oracle.limits import AdaptiveConcurrency, TokenBucket, backoff_delay, duration
from reflection_assets.engines.oracle.pricing import cost_usd, price_for
from reflection_assets.engines.oracle.replies import BackendError, BackendReply, ErrorKind, OracleReply
from reflection_assets.engines.oracle.settings import OracleSettings
from reflection_assets.engines.store.storage import Database
from reflection_assets.method.requests import Message, OracleRequest
from reflection_assets.method.served import ServedIdentity

_DONE = object()
_UNRESOLVED = object()


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


class OracleClient:
    def __init__(
        self,
        settings: OracleSettings,
        db: Database,
        artifacts: str | Path,
        log: logging.Logger | None = None,
        backend: Backend | None = None,
        served: ServedIdentity | None = None,
        scope: BatchScope | None = None,
    ):
        self.settings = settings
        self.scope = scope or BatchScope()  # whose batches these are, in batch mode
        # What serves the model name (a probe, or the last observation of these settings):
        # recorded with every reply, and part of the request keys when it is not the first
        # snapshot this database saw (see served_key).
        self.served = served
        self._served_key: object = _UNRESOLVED
        self.cache = OracleCache(db)
        self.backend = backend or make_backend(settings, artifacts)
        self.log = log or logging.getLogger("reflection.oracle")
        self.price = price_for(
            settings.backend, settings.model, settings.price_input_per_mtok, settings.price_output_per_mtok
        )
        self.stats = OracleStats()
        self.budget_exhausted = False
        self.batches_cancelled = False  # batch mode: some were cancelled by `reflection batch cancel`
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
        return OracleRequest(tuple(messages), sampling, prompt_version, tuple(stop), constraint, self.served_key())

    def served_key(self) -> str | None:
        """The served identity as part of request keys: None under the first snapshot this
        database saw behind the model name (requests keep the keys they had before the
        probe, so upgrading buys nothing again), its digest under any other."""
        if self._served_key is _UNRESOLVED:
            if self.served is None:
                self._served_key = None
            else:
                sampling = self.settings.sampling
                first = self.cache.baseline(sampling.backend, sampling.model, self.served)
                self._served_key = None if first.digest == self.served.digest else self.served.digest
        return self._served_key  # type: ignore[return-value]

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
            yield from self._dispatch(pending, len(cached), len(unique))
        self.stats.wall_s += time.monotonic() - started

    def _dispatch(self, pending: list[OracleRequest], cached: int, total: int) -> Iterator[OracleReply]:
        """The uncached requests: online, or through the Batch API in batch mode."""
        if self.settings.mode == "batch":
            self.log.info(f"oracle: {cached} of {total} requests cached, {len(pending)} go in batches")
            yield from BatchRunner(self, self.scope).run(pending)
        else:
            self.log.info(f"oracle: {cached} of {total} requests cached, sending {len(pending)}")
            yield from self._send(pending)

    # -- sending -----------------------------------------------------------------------

    def _send(self, pending: list[OracleRequest]) -> Iterator[OracleReply]:
        out: queue.Queue = queue.Queue()
        writer = CacheWriter(self.cache, self.settings.flush_interval_s, lambda batch: [out.put(r) for r in batch])
        cancel = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(_Sender(self, pending, writer, cancel).run())
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


class DeferringClient(OracleClient):
    """A client that answers from the cache only: every request it would send is kept in
    `deferred` and answered as not asked yet. Running a stage's own logic with it gives the
    requests that stage still needs (`reflection batch export`), wave by wave: a follow-up
    that depends on an unanswered reply is not asked for until that reply is in."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deferred: dict[str, OracleRequest] = {}

    def _dispatch(self, pending: list[OracleRequest], cached: int, total: int) -> Iterator[OracleReply]:
        for request in pending:
            self.deferred[request.key] = request
            yield self._failure(request, ErrorKind.DEFERRED, "not asked: written to a batch file", 0)


class _Sender:
    """One sending of pending requests, in named steps: each request is admitted under the
    dollar budget, attempted under the pacing (requests and tokens per minute) and the
    adaptive concurrency limit, retried with backoff while its failure is transient, and
    recorded (reply or failure) in the cache writer.

    A request waiting out its backoff is not held by a worker: it returns to the queue when
    its wait is over, and the worker sends the next one meanwhile. (With each worker sleeping
    through its request's backoff, a 10% rate of 429s kept 45 of 64 slots busy:
    benchmarks/library_limits.py.)"""

    def __init__(self, client: OracleClient, pending: list[OracleRequest], writer: CacheWriter, cancel: threading.Event):
        self.client = client
        self.settings = settings = client.settings
        self.stats = client.stats
        self.writer = writer
        self.cancel = cancel
        self.limiter = AdaptiveConcurrency(client.backend.concurrency)
        self.rpm = TokenBucket(settings.rpm) if settings.rpm else None
        self.tpm = TokenBucket(settings.tpm) if settings.tpm else None
        self.reserved_usd = 0.0  # the worst case of what is in flight, held against the budget
        # (request, attempt); None tells a worker that every request is done.
        self.work: asyncio.Queue[tuple[OracleRequest, int] | None] = asyncio.Queue()
        # Short prompts first lets the local backend batch similar lengths together.
        for request in sorted(pending, key=OracleRequest.prompt_chars):
            self.work.put_nowait((request, 0))
        self.unfinished = len(pending)
        self.workers = min(client.backend.concurrency, len(pending))
        self.progress = _Progress(len(pending), client, self.limiter)

    async def run(self) -> None:
        async with self.client.backend:
            ticker = asyncio.create_task(self.progress.tick(self.settings.progress_interval_s))
            try:
                await asyncio.gather(*(self._worker() for _ in range(self.workers)))
            finally:
                ticker.cancel()
                self.stats.concurrency_decreases += self.limiter.decreases
        self.progress.report(final=True)

    async def _worker(self) -> None:
        while not self.cancel.is_set():
            try:  # a bounded wait, so that a cancel is seen while retries are waiting out
                item = await asyncio.wait_for(self.work.get(), timeout=0.25)
            except asyncio.TimeoutError:
                continue
            if item is None:
                return
            await self._complete(*item)

    async def _complete(self, request: OracleRequest, attempt: int) -> None:
        """One attempt; a transient failure goes back to the queue after its backoff."""
        if not self._admit(request, attempt):
            return self._finished()
        started = time.monotonic()
        try:
            reply = await self._attempt(request, attempt)
        except BackendError as error:
            if not error.transient or attempt >= self.settings.max_retries:
                self._record_failure(request, error, attempt + 1)
                return self._finished()
            self.stats.retries += 1
            delay = backoff_delay(attempt + 1, error.retry_after)
            asyncio.get_running_loop().call_later(delay, self.work.put_nowait, (request, attempt + 1))
            return
        self._record_reply(request, reply, time.monotonic() - started, attempt + 1)
        self._finished()

    def _finished(self) -> None:
        self.unfinished -= 1
        if self.unfinished == 0:
            for _ in range(self.workers):
                self.work.put_nowait(None)

    def _worst_cost(self, request: OracleRequest) -> float:
        return cost_usd(self.client.price, request.prompt_chars() // 4, request.sampling.max_tokens)

    def _admit(self, request: OracleRequest, attempt: int) -> bool:
        """Whether the budget allows sending (spent + in flight + this one's worst case);
        once it does not, nothing more is sent and every request left is recorded as stopped."""
        budget = self.settings.budget_usd
        if budget is None:
            return True
        client = self.client
        if not client.budget_exhausted and self.stats.cost_usd + self.reserved_usd + self._worst_cost(request) <= budget:
            return True
        if not client.budget_exhausted:
            client.log.warning(
                f"oracle: budget of ${budget:.2f} reached (${self.stats.cost_usd:.4f} spent, all replies kept); "
                "no further requests are sent"
            )
            client.budget_exhausted = True
        self.stats.budget_stopped += 1
        self.writer.add(request, client._failure(request, ErrorKind.BUDGET, "not sent: budget reached", attempt))
        self.progress.done += 1
        return False

    async def _attempt(self, request: OracleRequest, attempt: int) -> BackendReply:
        """One call: paced, within the concurrency limit, its worst-case cost reserved while
        it is in flight. Raises BackendError when the call fails."""
        if self.rpm:
            await self.rpm.take(1)
        estimate = request.estimated_tokens()
        if self.tpm:
            await self.tpm.take(estimate)
        worst = self._worst_cost(request)
        self.reserved_usd += worst
        await self.limiter.acquire()
        if attempt == 0:
            self.stats.sent += 1
        outcome = "error"
        try:
            reply = await self.client.backend.complete(request)
            outcome = "ok"
        except BackendError as error:
            if error.throttled:
                outcome = "throttled"
                self.stats.throttled += 1
            raise
        finally:
            await self.limiter.release(outcome)
            self.reserved_usd -= worst
        if self.tpm:
            self.tpm.give_back(estimate - reply.prompt_tokens - reply.completion_tokens)
        return reply

    def _record_reply(self, request: OracleRequest, reply: BackendReply, latency: float, attempts: int) -> None:
        cost = cost_usd(self.client.price, reply.prompt_tokens, reply.completion_tokens)
        stats = self.stats
        stats.succeeded += 1
        stats.prompt_tokens += reply.prompt_tokens
        stats.completion_tokens += reply.completion_tokens
        stats.cost_usd += cost
        stats.truncated += reply.finish_reason == "length"
        served = self.client.served.digest if self.client.served else None
        self.writer.add(
            request,
            OracleReply.paid(request, reply, cost_usd=cost, attempts=attempts, served_identity=served, latency_s=latency),
        )
        self.progress.done += 1

    def _record_failure(self, request: OracleRequest, error: BackendError, attempts: int) -> None:
        kind = ErrorKind.TRANSIENT if error.transient else ErrorKind.PERMANENT
        note = f" after {attempts} attempts" if error.transient else ""
        self.writer.add(request, self.client._failure(request, kind, f"{error}{note}", attempts, error.status))
        self.stats.failed += 1
        self.progress.done += 1
        if not error.transient:
            self.client.log.warning(f"oracle: request {request.key[:12]} failed for good: {error}")


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
            + (f"took {duration(elapsed)}" if final else f"ETA {duration(eta) if eta != float('inf') else '?'}")
            + f", {tokens:,} tokens, ${stats.cost_usd:.4f}, {stats.retries} retries, "
            f"{stats.failed} failed, concurrency {int(self.limiter.limit)}"
        )

    async def tick(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.report()
