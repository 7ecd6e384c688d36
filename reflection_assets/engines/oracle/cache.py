"""The content-addressed reply cache in DuckDB, and the writer that fills it.

Replies are buffered and written in short transactions at least every flush interval, from
a thread of their own, so the network never waits on the database. Each paid reply is also
appended to a journal file the moment it arrives (engines/oracle/journal.py), so a killed
process loses none: the next client replays the journal. A reply reaches the caller only
after it is in the database: parsing always comes after storing."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from reflection_assets.engines.oracle.journal import ReplyJournal, discard, journal_folder, orphaned_rows
from reflection_assets.engines.oracle.replies import OracleReply
from reflection_assets.engines.storage import Database
from reflection_assets.method.requests import OracleRequest
from reflection_assets.method.served import ServedIdentity

Flushed = Callable[[list[OracleReply]], None]

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
        self.journals = journal_folder(db.path)

    def replay_journals(self) -> int:
        """Store the replies that killed processes journaled but never wrote to the
        database; returns how many rows were replayed."""
        replayed = 0
        width = len(REPLY_SCHEMA)
        for path, handle, rows in orphaned_rows(self.journals):
            if rows:
                # A journal written before the served columns existed has shorter rows.
                rows = [list(row) + [None] * (width - len(row)) for row in rows]
                self._insert_replies(pl.DataFrame(rows, schema=REPLY_SCHEMA, orient="row"))
                replayed += len(rows)
            discard(path, handle)
        return replayed

    def spend(self) -> list[Spend]:
        """Cached replies, tokens and cost per fingerprint (the oracle.spend view)."""
        with self.db.connect() as con:
            rows = con.execute(
                "SELECT fingerprint, model, replies, prompt_tokens + completion_tokens, cost_usd "
                "FROM oracle.spend ORDER BY model, fingerprint"
            ).fetchall()
        return [Spend(*row) for row in rows]

    def baseline(self, backend: str, model: str, identity: ServedIdentity) -> ServedIdentity:
        """The first snapshot this database saw behind (backend, model): recorded now when
        there is none yet. Requests sent under it keep their pre-probe keys."""
        with self.db.transaction() as con:
            con.execute(
                "INSERT OR IGNORE INTO oracle.served_baselines (backend, model, identity_json) VALUES (?, ?, ?)",
                [backend, model, json.dumps(identity.as_metadata(), sort_keys=True)],
            )
            (stored,) = con.execute(
                "SELECT identity_json FROM oracle.served_baselines WHERE backend = ? AND model = ?", [backend, model]
            ).fetchone()
        facts = json.loads(stored)
        first = ServedIdentity.from_metadata(facts)
        if first is None:  # not readable as an identity: the current one is taken as new
            return identity
        # Compared as the current probe counts (`model` leaves system_fingerprint out).
        return dataclasses.replace(first, probe=identity.probe)

    def journal(self) -> ReplyJournal:
        return ReplyJournal(self.journals)

    def _insert_replies(self, replies: pl.DataFrame) -> None:
        columns = ", ".join(REPLY_SCHEMA)
        with self.db.transaction() as con:
            con.execute(f"INSERT OR IGNORE INTO oracle.replies ({columns}) SELECT {columns} FROM replies")

    def lookup(self, keys: Iterable[str]) -> dict[str, OracleReply]:
        wanted = pl.DataFrame({"request_key": sorted(set(keys))}, schema={"request_key": pl.Utf8})
        if wanted.is_empty():
            return {}
        with self.db.connect() as con:
            rows = con.execute(
                """
                SELECT r.request_key, r.fingerprint, r.reply_text, r.finish_reason,
                       r.prompt_tokens, r.completion_tokens, r.cost_usd, r.latency_s, r.attempts,
                       r.served_model, r.system_fingerprint, r.served_identity
                FROM oracle.replies AS r JOIN wanted USING (request_key)
                """
            ).fetchall()
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

    def write(self, batch: Sequence[tuple[OracleRequest, OracleReply]]) -> None:
        """One transaction: replies into oracle.replies, failures into oracle.failures.
        Rows go in as one frame each (executemany is ~100x slower in DuckDB)."""
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
                con.execute(f"INSERT OR IGNORE INTO oracle.replies ({columns}) SELECT {columns} FROM replies")
            if failures.height:
                columns = ", ".join(FAILURE_SCHEMA)
                con.execute(f"INSERT INTO oracle.failures ({columns}) SELECT {columns} FROM failures")


class CacheWriter:
    """Journals each paid reply as it arrives, buffers finished calls and writes them to the
    database every `interval_s` (or every `max_batch`), then hands the written replies to
    `on_flushed`. The journal is removed once everything it holds is in the database."""

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
        self._journal = cache.journal()
        self._thread = threading.Thread(target=self._loop, name="oracle-cache-writer", daemon=True)
        self._thread.start()

    def add(self, request: OracleRequest, reply: OracleReply) -> None:
        with self._lock:
            if reply.ok:
                self._journal.append(reply_row(request, reply))
            self._buffer.append((request, reply))
            if len(self._buffer) >= self.max_batch:
                self._wake.set()

    def _flush(self) -> None:
        with self._lock:
            batch, self._buffer = self._buffer, []
        if not batch:
            return
        self.cache.write(batch)
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
        if self.error is not None:
            # The journal stays: the next client replays what did not reach the database.
            raise self.error
        self._journal.close()
