"""The content-addressed reply cache in DuckDB, and the writer that fills it.

Replies are buffered and written in short transactions at least every flush interval, from
a thread of their own, so the network never waits on the database. Each paid reply is also
appended to the store's ledger the moment it arrives (engines/store/ledger.py) and fsynced there
before its flush, so a killed process loses none (the next client stores the replies an
orphaned segment holds) and a damaged store loses none (`reflection rebuild`). A reply
reaches the caller only after it is in the database: parsing always comes after storing."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from reflection_assets.engines.store.ledger import finish_orphan, logged, orphans
from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.oracle.journal import discard, journal_folder, orphaned_rows
from reflection_assets.engines.oracle.replies import OracleReply
from reflection_assets.engines.store.storage import Database
from reflection_assets.method.requests import OracleRequest
from reflection_assets.method.served import ServedIdentity

Flushed = Callable[[list[OracleReply]], None]

SQL = queries("oracle_cache")

REPLY_SCHEMA = {
    "request_key": pl.Utf8,
    "fingerprint": pl.Utf8,
    "backend": pl.Utf8,
    "model": pl.Utf8,
    "prompt_version": pl.Utf8,
    "request_json": pl.Utf8,
    "reply_text": pl.Utf8,
    "finish_reason": pl.Utf8,
    "prompt_tokens": pl.Int32,
    "completion_tokens": pl.Int32,
    "cost_usd": pl.Float64,
    "latency_s": pl.Float64,
    "attempts": pl.Int32,
    "served_identity": pl.Utf8,
    "served_model": pl.Utf8,
    "system_fingerprint": pl.Utf8,
}
FAILURE_SCHEMA = {
    "request_key": pl.Utf8,
    "fingerprint": pl.Utf8,
    "backend": pl.Utf8,
    "model": pl.Utf8,
    "error_kind": pl.Utf8,
    "status": pl.Int32,
    "message": pl.Utf8,
    "attempts": pl.Int32,
}


def reply_row(request: OracleRequest, reply: OracleReply) -> tuple:
    """A reply as a row of oracle.replies, in REPLY_SCHEMA's order."""
    return (
        reply.request_key,
        reply.fingerprint,
        request.sampling.backend,
        request.sampling.model,
        request.prompt_version,
        json.dumps(request.canonical(), ensure_ascii=False),
        reply.text,
        reply.finish_reason,
        reply.prompt_tokens,
        reply.completion_tokens,
        reply.cost_usd,
        reply.latency_s,
        reply.attempts,
        reply.served_identity,
        reply.served_model,
        reply.system_fingerprint,
    )


def reply_record(request: OracleRequest, reply: OracleReply) -> dict:
    """A reply as the ledger keeps it: the row, by column name, and when it arrived."""
    record = dict(zip(REPLY_SCHEMA, reply_row(request, reply)))
    record["created_at"] = datetime.now().isoformat(sep=" ")
    return record


@dataclass(frozen=True)
class Spend:
    fingerprint: str
    model: str
    replies: int
    tokens: int
    cost_usd: float


class OracleCache:
    def __init__(self, db: Database):
        self.db = db
        self.ledger = db.ledger()
        self.journals = journal_folder(db.path)  # the ledger's predecessor, replayed when found

    def replay_journals(self) -> int:
        """Store the replies that killed processes logged but never wrote to the database
        (orphaned ledger segments, and journals of the versions before the ledger); returns
        how many rows were replayed. An orphaned segment is compressed once replayed."""
        replayed = 0
        width = len(REPLY_SCHEMA)
        for path, handle, rows in orphaned_rows(self.journals):
            if rows:
                # A journal written before the served columns existed has shorter rows.
                rows = [list(row) + [None] * (width - len(row)) for row in rows]
                frame = pl.DataFrame(rows, schema=REPLY_SCHEMA, orient="row")
                self.ledger.put("oracle.replies", frame.to_dicts())
                self._insert_replies(frame)
                replayed += len(rows)
            discard(path, handle)
        for segment, handle in orphans(self.ledger.folder):
            rows = [row for event in segment.events if event.get("t") == "oracle.replies" and event.get("op") == "put"
                    for row in event.get("rows", [])]
            if rows:
                frame = pl.DataFrame([[row.get(c) for c in REPLY_SCHEMA] for row in rows], schema=REPLY_SCHEMA, orient="row")
                replayed += self._insert_replies(frame)
            finish_orphan(segment, handle)
        return replayed

    def spend(self) -> list[Spend]:
        """Cached replies, tokens and cost per fingerprint (the oracle.spend view)."""
        with self.db.connect() as con:
            rows = con.execute(SQL.spend).fetchall()
        return [Spend(*row) for row in rows]

    def baseline(self, backend: str, model: str, identity: ServedIdentity) -> ServedIdentity:
        """The first snapshot this database saw behind (backend, model): recorded now when
        there is none yet. Requests sent under it keep their pre-probe keys."""
        with self.db.transaction() as con:
            logged(
                con, self.ledger, "oracle.served_baselines", SQL.record_baseline,
                [backend, model, json.dumps(identity.as_metadata(), sort_keys=True)],
            )
            (stored,) = con.execute(SQL.baseline, [backend, model]).fetchone()
        facts = json.loads(stored)
        first = ServedIdentity.from_metadata(facts)
        if first is None:  # not readable as an identity: the current one is taken as new
            return identity
        # Compared as the current probe counts (`model` leaves system_fingerprint out).
        return dataclasses.replace(first, probe=identity.probe)

    def _insert_replies(self, replies: pl.DataFrame) -> int:
        """Rows not stored yet go in; returns how many did."""
        columns = ", ".join(REPLY_SCHEMA)
        with self.db.transaction() as con:
            return len(con.execute(SQL.format("insert_new_replies", columns=columns)).fetchall())

    def lookup(self, keys: Iterable[str]) -> dict[str, OracleReply]:
        wanted = pl.DataFrame({"request_key": sorted(set(keys))}, schema={"request_key": pl.Utf8})
        if wanted.is_empty():
            return {}
        with self.db.connect() as con:
            rows = con.execute(SQL.lookup).fetchall()
        return {
            row[0]: OracleReply(
                request_key=row[0],
                fingerprint=row[1],
                text=row[2],
                finish_reason=row[3],
                prompt_tokens=row[4],
                completion_tokens=row[5],
                cost_usd=row[6],
                latency_s=row[7],
                attempts=row[8],
                cached=True,
                served_model=row[9],
                system_fingerprint=row[10],
                served_identity=row[11],
            )
            for row in rows
        }

    def write(self, batch: Sequence[tuple[OracleRequest, OracleReply]], in_ledger: bool = False) -> None:
        """One transaction: replies into oracle.replies, failures into oracle.failures.
        Rows go in as one frame each (executemany is ~100x slower in DuckDB). The replies
        go to the ledger first, fsynced, unless the caller put them there (`in_ledger`)."""
        if not in_ledger:
            self.ledger.put("oracle.replies", [reply_record(req, rep) for req, rep in batch if rep.ok])
        replies = pl.DataFrame(
            [reply_row(req, rep) for req, rep in batch if rep.ok], schema=REPLY_SCHEMA, orient="row"
        )
        failures = pl.DataFrame(
            [
                (
                    rep.request_key,
                    rep.fingerprint,
                    req.sampling.backend,
                    req.sampling.model,
                    rep.error_kind,
                    rep.status,
                    rep.error,
                    rep.attempts,
                )
                for req, rep in batch
                if not rep.ok
            ],
            schema=FAILURE_SCHEMA,
            orient="row",
        )
        with self.db.transaction() as con:
            if replies.height:
                columns = ", ".join(REPLY_SCHEMA)
                con.execute(SQL.format("insert_replies", columns=columns))
            if failures.height:
                columns = ", ".join(FAILURE_SCHEMA)
                con.execute(SQL.format("insert_failures", columns=columns))


class CacheWriter:
    """Logs each paid reply to the ledger as it arrives, buffers finished calls and writes
    them to the database every `interval_s` (or every `max_batch`), once the ledger has them
    on disk, then hands the written replies to `on_flushed`."""

    def __init__(self, cache: OracleCache, interval_s: float, on_flushed: Flushed, max_batch: int = 500):
        self.cache = cache
        self.interval_s = interval_s
        self.on_flushed = on_flushed
        self.max_batch = max_batch
        self.error: BaseException | None = None
        self._buffer: list[tuple[OracleRequest, OracleReply]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._ledger = cache.ledger
        self._ledger.client_started()
        self._thread = threading.Thread(target=self._loop, name="oracle-cache-writer", daemon=True)
        self._thread.start()

    def add(self, request: OracleRequest, reply: OracleReply) -> None:
        with self._lock:
            if reply.ok:
                self._ledger.reply(reply_record(request, reply))
            self._buffer.append((request, reply))
            if len(self._buffer) >= self.max_batch:
                self._wake.set()

    def _flush(self) -> None:
        with self._lock:
            batch, self._buffer = self._buffer, []
        if not batch:
            return
        self._ledger.sync()
        self.cache.write(batch, in_ledger=True)
        self.on_flushed([reply for _, reply in batch])

    def _loop(self) -> None:
        try:
            while not self._closing:
                self._wake.wait(self.interval_s)
                self._wake.clear()
                self._flush()
            self._flush()
        except BaseException as exc:  # surfaced to the caller by close()
            self.error = exc

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join()
        # Failed: this process's segment stays plain at its end, for the next client to replay.
        self._ledger.client_finished(stored=self.error is None)
        if self.error is not None:
            raise self.error
