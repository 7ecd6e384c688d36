"""Batch mode: a stage's uncached requests through the OpenAI Batch API at its price (half,
by default), resumable, never re-buying a reply.

The requests are written as batch input lines, in files of at most BATCH_MAX_REQUESTS lines
and under the 200 MB limit, uploaded with purpose `batch` and submitted with the 24 h
window. Each batch is recorded in DuckDB, with the request keys it holds, before anything
waits on it (oracle.batches): a run killed mid-wait re-attaches, on its next
materialization, to the batches it left, and never submits again a request whose reply is
cached or that sits in a live batch. The stage polls every BATCH_POLL_S with a progress
line, downloads the output and error files, stores every reply in the reply cache before
anyone parses it, and hands the replies on exactly as online calls are.

Failed lines (a 5xx or 429 body, an error object) and expired ones are retried in a batch of
their own, up to MAX_RETRIES; a line refused for good (400, 401, 404...) is recorded as
online. A batch that fails as a whole (`failed`, or `cancelled` by someone else) is
submitted once more and then reported with the provider's message. Nothing falls back to
online calls."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reflection_assets.engines.oracle.backends import redact
from reflection_assets.engines.oracle.batch_lines import CHAT_URL, COMPLETION_WINDOW, LineResult, lines_by_id, read_lines, split_files
from reflection_assets.engines.oracle.batch_store import TERMINAL, BatchRecord, BatchStore
from reflection_assets.engines.oracle.limits import duration
from reflection_assets.engines.oracle.pricing import cost_usd
from reflection_assets.engines.oracle.replies import ErrorKind, OracleReply
from reflection_assets.errors import UserError
from reflection_assets.method.requests import OracleRequest

if TYPE_CHECKING:
    import openai  # imported where it is used: it takes over a second, and most processes never call it


class BatchError(UserError):
    """The Batch API refused what a stage needs (an upload, a submission, a download)."""


@dataclass(frozen=True)
class BatchScope:
    """Who a client's batches are for: the role whose settings reach the endpoint, and the
    dataset, stage and shard (what `reflection batch list` shows and `cancel` selects)."""

    role: str = "oracle"
    dataset: str | None = None
    stage: str | None = None
    shard: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {"dataset": self.dataset, "stage": self.stage, "shard": self.shard}


def batch_api(settings) -> openai.OpenAI:
    """The SDK's client for the files and batches endpoints; its own retries (with backoff)
    cover a dropped connection or a 5xx on these small calls."""
    import openai

    return openai.OpenAI(
        api_key=settings.api_key or "unset",
        base_url=settings.base_url,
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
    )


class BatchRunner:
    """One `complete_many` of a client in batch mode: re-attach, submit, wait, collect."""

    def __init__(self, client, scope: BatchScope):
        self.client = client
        self.settings = client.settings
        self.scope = scope
        self.store = BatchStore(client.cache.db)
        self.log = client.log
        self.stats = client.stats
        self.discount = self.settings.batch_discount
        self._api: openai.OpenAI | None = None
        self.started = time.monotonic()
        self._stopped: list[OracleReply] = []  # recorded as stopped by the budget, to hand on
        self._worst: dict[str, float] = {}  # the worst-case cost of each request in flight, held against the budget

    @property
    def api(self) -> openai.OpenAI:
        if self._api is None:
            self._api = batch_api(self.settings)
        return self._api

    def _error(self, what: str, exc: openai.APIError) -> BatchError:
        import openai

        detail = f"HTTP {exc.status_code}: {exc.message}" if isinstance(exc, openai.APIStatusError) else str(exc)
        return BatchError(redact(f"the Batch API failed to {what} ({detail})", self.settings.api_key))

    def _call(self, what: str, call, *args, **kwargs):
        import openai

        try:
            return call(*args, **kwargs)
        except openai.APIError as exc:
            raise self._error(what, exc) from None

    # -- the whole of it ---------------------------------------------------------------------

    def run(self, pending: Sequence[OracleRequest]) -> Iterator[OracleReply]:
        refused = [r for r in pending if r.constraint is not None]
        if refused:  # as online: a constrained reply needs the local backend
            failures = [
                (r, self.client._failure(r, ErrorKind.PERMANENT, f"the {r.constraint} constraint needs the local backend", 0))
                for r in refused
            ]
            self.client.cache.write(failures)
            yield from (reply for _, reply in failures)
            pending = [r for r in pending if r.constraint is None]
        wanted = {r.key: r for r in pending}
        waiting = self._reattach(wanted)
        held = {key for record in waiting for key in self.store.keys_of(record.batch_key)}
        fresh = [r for key, r in wanted.items() if key not in held]
        if waiting:
            self.log.info(
                f"oracle batch: re-attached to {len(waiting)} batch(es) in flight holding "
                f"{len(held & set(wanted))} of these requests; submitting {len(fresh)}"
            )
        waiting += self._submit(fresh, attempt=1)
        answered: set[str] = set()

        def handed_on(replies: Sequence[OracleReply]) -> Iterator[OracleReply]:
            for reply in replies:
                if reply.request_key in wanted and reply.request_key not in answered:
                    answered.add(reply.request_key)
                    yield reply

        try:
            while True:
                yield from handed_on(self._stopped)
                self._stopped = []
                if not waiting:
                    break
                still = []
                for record in waiting:
                    record = self._poll(record)
                    if record.status in TERMINAL:
                        replies, retries = self._collect(record, wanted)
                        yield from handed_on(replies)
                        still += retries
                    else:
                        still.append(record)
                waiting = still
                if waiting:
                    self._progress(waiting)
                    time.sleep(self.settings.batch_poll_s)
        finally:
            if self._api is not None:
                self._api.close()
        # Every request gets its one reply; one that no batch accounted for is a failure.
        for key in wanted.keys() - answered:
            yield self.client._failure(wanted[key], ErrorKind.TRANSIENT, "no outcome from its batch", 0)

    # -- submitting --------------------------------------------------------------------------

    def _admit(self, requests: Sequence[OracleRequest]) -> tuple[list[OracleRequest], list[OracleRequest]]:
        """The budget, as online: what is spent plus the worst case of what is submitted."""
        budget = self.settings.budget_usd
        if budget is None:
            return list(requests), []
        admitted, stopped = [], []
        reserved = sum(self._worst.values())
        for request in requests:
            worst = cost_usd(self.client.price, request.prompt_chars() // 4, request.sampling.max_tokens) * self.discount
            if not stopped and self.stats.cost_usd + reserved + worst <= budget:
                admitted.append(request)
                reserved += worst
                self._worst[request.key] = worst
            else:
                stopped.append(request)
        if stopped:
            self.log.warning(f"oracle batch: budget of ${budget:.2f} reached; {len(stopped)} requests not submitted")
            self.client.budget_exhausted = True
        return admitted, stopped

    def _submit(
        self, requests: Sequence[OracleRequest], attempt: int, retry_of: str | None = None, whole_retry: bool = False
    ) -> list[BatchRecord]:
        admitted, stopped = self._admit(requests)
        if stopped:
            failures = [(r, self.client._failure(r, ErrorKind.BUDGET, "not submitted: budget reached", 0)) for r in stopped]
            self.client.cache.write(failures)
            self.stats.budget_stopped += len(stopped)
            self._stopped += [reply for _, reply in failures]
        records = []
        for chunk in split_files(admitted, self.settings.batch_max_requests):
            chunk_requests = [request for request, _ in chunk]
            # Recorded first: a kill from here on leaves a row that the next run resolves.
            record = self.store.create(
                kind="api", role=self.scope.role, base_url=self.settings.base_url, model=self.settings.model,
                scope=self.scope.as_dict(), requests=chunk_requests, attempt=attempt, retry_of=retry_of,
                whole_retry=whole_retry,
            )
            data = "".join(line for _, line in chunk).encode("utf-8")
            uploaded = self._call("upload a batch file", self.api.files.create, file=(f"{record.batch_key}.jsonl", data), purpose="batch")
            self.store.update(record.batch_key, input_file_id=uploaded.id)
            records.append(self._create(self.store.get(record.batch_key)))
            if attempt == 1 and not whole_retry:
                self.stats.sent += len(chunk_requests)  # distinct requests, as online
        if records:
            self.log.info(
                f"oracle batch: submitted {sum(r.requests for r in records)} requests in {len(records)} batch(es)"
                + (f" (retry {attempt})" if attempt > 1 else "") + (" (the batch failed as a whole: once more)" if whole_retry else "")
            )
        return records

    def _create(self, record: BatchRecord) -> BatchRecord:
        metadata = {"reflection_batch": record.batch_key}
        metadata.update({k: str(v) for k, v in self.scope.as_dict().items() if v is not None})
        batch = self._call(
            "submit a batch", self.api.batches.create, input_file_id=record.input_file_id, endpoint=CHAT_URL,
            completion_window=COMPLETION_WINDOW, metadata=metadata,
        )
        self.store.update(record.batch_key, provider_batch_id=batch.id, status=batch.status)
        return self.store.get(record.batch_key)

    # -- re-attaching --------------------------------------------------------------------------

    def _reattach(self, wanted: dict[str, OracleRequest]) -> list[BatchRecord]:
        """The batches a killed run left that hold some of these requests, resolved: a row
        recorded before its upload is dropped (nothing reached the provider); one uploaded
        but not known to be submitted is looked up at the provider by its metadata, and
        submitted now if it is not there."""
        found = []
        for record in self.store.uncollected(self.scope.role, self.settings.model, self.settings.base_url):
            if not set(self.store.keys_of(record.batch_key)) & wanted.keys():
                continue
            if record.provider_batch_id is None and record.input_file_id is None:
                self.store.delete(record.batch_key)
                continue
            if record.provider_batch_id is None:
                existing = self._find_at_provider(record.batch_key)
                if existing is not None:
                    self.store.update(record.batch_key, provider_batch_id=existing.id, status=existing.status)
                    record = self.store.get(record.batch_key)
                else:
                    record = self._create(record)
            found.append(record)
        return found

    def _find_at_provider(self, batch_key: str):
        page = self._call("list batches", self.api.batches.list, limit=100)
        for _ in range(20):  # the newest 2,000 batches: a row this recent is among them
            for batch in page.data:
                if (batch.metadata or {}).get("reflection_batch") == batch_key:
                    return batch
            if not page.has_next_page():
                return None
            page = self._call("list batches", page.get_next_page)
        return None

    # -- waiting -----------------------------------------------------------------------------

    def _poll(self, record: BatchRecord) -> BatchRecord:
        import openai

        if record.status in TERMINAL:
            return record  # finished before a kill, never collected
        try:
            batch = self.api.batches.retrieve(record.provider_batch_id)
        except openai.NotFoundError:
            # Deleted, or made with another key: a failure as a whole (submitted once more).
            self.store.update(record.batch_key, status="failed", message=f"the provider has no batch {record.provider_batch_id}")
            return self.store.get(record.batch_key)
        except openai.APIError as exc:
            raise self._error(f"look up batch {record.provider_batch_id}", exc) from None
        counts = batch.request_counts
        message = None
        if batch.errors and batch.errors.data:
            message = "; ".join(e.message or e.code or "" for e in batch.errors.data)
        seen = {
            "status": batch.status,
            "completed": counts.completed if counts else 0,
            "failed": counts.failed if counts else 0,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "message": message,
        }
        # Written only when something changed: a wait of hours is mostly looks that find the
        # batch as it was, and each write is a DuckDB commit and checkpoint.
        if any(getattr(record, name) != value for name, value in seen.items()):
            self.store.update(record.batch_key, **seen)
            record = self.store.get(record.batch_key)
        return record

    def _progress(self, waiting: Sequence[BatchRecord]) -> None:
        states = Counter(r.status for r in waiting)
        total = sum(r.requests for r in waiting)
        done = sum(r.completed for r in waiting)
        failed = sum(r.failed for r in waiting)
        elapsed = time.monotonic() - self.started
        rate = (done + failed) / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {duration((total - done - failed) / rate)}" if rate > 0 else "ETA ? (up to the 24 h window)"
        self.log.info(
            f"oracle batch: {len(waiting)} batch(es) "
            f"({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}), "
            f"requests {done:,}/{total:,} done, {failed:,} failed, {eta}; next look in {self.settings.batch_poll_s:g} s"
        )

    # -- collecting --------------------------------------------------------------------------

    def _download(self, file_id: str | None) -> str:
        if not file_id:
            return ""
        return self._call(f"download file {file_id}", self.api.files.content, file_id).text

    def _collect(self, record: BatchRecord, wanted: dict[str, OracleRequest]) -> tuple[list[OracleReply], list[BatchRecord]]:
        """Store what a finished batch answered (replies first, with the failures that are
        final, in one transaction), then submit what is tried again."""
        source = f"batch {record.provider_batch_id}"
        lines = lines_by_id(
            read_lines(self._download(record.output_file_id), f"{source} output")
            + read_lines(self._download(record.error_file_id), f"{source} errors")
        )
        keys = self.store.keys_of(record.batch_key)
        # This run's own requests, and the canonical form of the others (a batch re-attached
        # also holds requests no stage asks for now: their replies are stored all the same).
        requests = self.store.known_requests(k for k in keys if k not in wanted)
        requests.update((k, wanted[k]) for k in keys if k in wanted)
        outcome = self._sort_out(record, [requests[k] for k in keys if k in requests], lines)
        self.client.cache.write(outcome.stored + outcome.failures)
        stats = self.stats
        stats.succeeded += len(outcome.stored)
        stats.failed += len(outcome.failures)
        for _, reply in outcome.stored:
            stats.prompt_tokens += reply.prompt_tokens
            stats.completion_tokens += reply.completion_tokens
            stats.cost_usd += reply.cost_usd
            stats.truncated += reply.truncated
        for key in keys:
            self._worst.pop(key, None)  # no longer in flight: its real cost counts now
        retries = []
        if outcome.whole_again:
            retries += self._submit(outcome.whole_again, record.attempt, record.batch_key, whole_retry=True)
        if outcome.lines_again:
            stats.retries += len(outcome.lines_again)
            retries += self._submit(outcome.lines_again, record.attempt + 1, record.batch_key)
        self.store.update(record.batch_key, collected=True)
        self.log.info(
            f"oracle batch: {source} {record.status}: {len(outcome.stored)} replies stored, "
            f"{len(outcome.failures)} failed, {sum(r.requests for r in retries)} submitted again"
        )
        return [reply for _, reply in outcome.stored + outcome.failures], retries

    def _sort_out(self, record: BatchRecord, requests: Sequence[OracleRequest], lines: dict[str, LineResult]) -> "_Outcome":
        """What becomes of each request of a finished batch: stored, tried again (its line
        alone, or the whole batch once), or recorded as failed."""
        out = _Outcome()
        unanswered = []
        may_retry = record.attempt <= self.settings.max_retries
        for request in requests:
            line = lines.get(request.key)
            if line is None:
                unanswered.append(request)
            elif line.ok:
                out.stored.append((request, self._reply(request, line, record)))
            elif line.transient and may_retry:
                out.lines_again.append(request)
            else:
                note = f" after {record.attempt} batches" if line.transient else ""
                out.failures.append((request, self._failed(request, line.message + note, line.status, line.transient, record)))
        whole = record.status in ("failed", "cancelled")
        if record.cancel_requested:  # whatever it ended as: what it left is not asked again
            self.client.batches_cancelled = True
            out.fail(self, record, unanswered, "cancelled by `reflection batch cancel`", transient=False)
        elif whole and not record.whole_retry:
            out.whole_again = unanswered
        elif whole:
            out.fail(self, record, unanswered, f"batch {record.status} twice: {record.message or 'no reason given'}")
        elif may_retry:
            out.lines_again += unanswered  # expired, or missing from the output
        else:
            out.fail(self, record, unanswered, f"not answered before the batch {record.status}")
        return out

    def _reply(self, request: OracleRequest, line: LineResult, record: BatchRecord) -> OracleReply:
        reply = line.reply
        assert reply is not None
        cost = cost_usd(self.client.price, reply.prompt_tokens, reply.completion_tokens) * self.discount
        served = self.client.served.digest if self.client.served else None
        return OracleReply.paid(request, reply, cost_usd=cost, attempts=record.attempt, served_identity=served)

    def _failed(self, request: OracleRequest, message: str, status: int | None, transient: bool, record: BatchRecord) -> OracleReply:
        kind = ErrorKind.TRANSIENT if transient else ErrorKind.PERMANENT
        return self.client._failure(request, kind, f"{message} (batch {record.provider_batch_id})", record.attempt, status)



@dataclass
class _Outcome:
    """A finished batch's requests, sorted (BatchRunner._sort_out)."""

    stored: list[tuple[OracleRequest, OracleReply]] = field(default_factory=list)
    failures: list[tuple[OracleRequest, OracleReply]] = field(default_factory=list)
    lines_again: list[OracleRequest] = field(default_factory=list)  # in a batch of their own, attempt + 1
    whole_again: list[OracleRequest] = field(default_factory=list)  # the batch failed as a whole: once more

    def fail(self, runner: BatchRunner, record: BatchRecord, requests, message: str, transient: bool = True) -> None:
        self.failures += [(r, runner._failed(r, message, None, transient, record)) for r in requests]
