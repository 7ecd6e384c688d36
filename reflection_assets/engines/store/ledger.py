"""The ledger: paid work kept outside the database, append-only, so that a damaged or lost
store loses nothing that cost money (`reflection rebuild` restores it from here).

What goes in: every oracle reply (the row the reply cache holds), every batch record with
its requests, the served-model baselines (they decide request keys), the dataset and
test-set registries and the adapter registry. Each is one JSON line, `{"t": table, "op":
"put" | "del", "rows" | "key": ..., "at": ns}`, in a segment file of the folder beside the
store (`<database>.ledger/`). Nothing here is ever removed.

A segment belongs to one process: it is created on the first line the process writes and
held with an exclusive flock until the process ends, so a live segment is told apart from
an orphan (its writer died) by whether the lock can be taken; the kernel releases the lock
however the writer dies. A line is handed to the kernel when it is written (a SIGKILL
cannot take it away) and fsynced at the oracle client's flush interval, before the replies
it holds are written to the database, and at once for every registry or batch line, before
its transaction commits. A segment is compressed (gzip, `.jsonl.gz`) when its process ends
with everything in it stored, or when the next oracle client finds it orphaned and has
stored its replies (replayed: the journal role: a kill loses no reply that arrived). A
segment also closes at ROTATE_BYTES, so no compression takes long.

Reading tolerates a torn end: a segment is read up to its last complete, parseable line
(plain) or complete gzip member data (compressed), and what follows is reported, not
fatal."""

from __future__ import annotations

import atexit
import fcntl
import gzip
import json
import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROTATE_BYTES = 64 << 20  # a closed segment compresses in about a second
COMPRESSLEVEL = 6

# The tables the ledger holds, each with the columns that identify a row: a later put of the
# same key replaces an earlier one, a delete removes every row its key columns match.
TABLES: dict[str, tuple[str, ...]] = {
    "registry.datasets": ("name",),
    "registry.testsets": ("name",),
    "oracle.replies": ("request_key",),
    "oracle.served_baselines": ("backend", "model"),
    "oracle.batches": ("batch_key",),
    "oracle.batch_requests": ("batch_key", "request_key"),
    "training.adapters": ("adapter_id",),
    "training.adapter_records": ("adapter_id", "record_id"),
    "training.current_adapters": ("dataset", "variant"),
}


def ledger_folder(database: Path) -> Path:
    """Beside the database file: the ledger belongs to it."""
    return database.with_name(database.name + ".ledger")


def _line(table: str, op: str, payload_key: str, payload: object) -> str:
    event = {"t": table, "op": op, payload_key: payload, "at": time.time_ns()}
    return json.dumps(event, ensure_ascii=False, default=str, separators=(",", ":")) + "\n"


def seal(path: Path) -> Path:
    """Compress a closed plain segment to `.jsonl.gz` (written aside, fsynced, renamed),
    then remove the plain file. A kill at any point leaves one readable copy at least."""
    target = path.with_name(path.name + ".gz")
    partial = path.with_name(f"{path.name}.gz.{os.getpid()}.partial")
    with open(path, "rb") as source, open(partial, "wb") as raw:
        with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, compresslevel=COMPRESSLEVEL, mtime=0) as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(partial, target)
    _fsync_folder(path.parent)
    path.unlink(missing_ok=True)
    return target


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal_unless_taken(path: Path) -> None:
    """Seal a closed segment of this process, unless an oracle client replaying it (it was
    unlocked once closed) holds it now or has sealed it already."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if path.exists():
            seal(path)
    except OSError:
        pass  # taken by a replayer, or the seal failed: left plain, still read, sealed later
    finally:
        handle.close()


class Ledger:
    """This process's writer for one database's ledger: get it with `ledger_for`. Threads
    share it; lines are written whole, one at a time."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._guard = threading.Lock()
        self._file = None
        self._path: Path | None = None
        self._closed: list[Path] = []  # rotated segments of this process, sealed at exit
        self._open_clients = 0  # oracle clients whose replies may not all be stored yet
        self._unstored = False  # a client failed before storing what it logged

    # -- writing -----------------------------------------------------------------------

    def put(self, table: str, rows: list[Mapping[str, object]], sync: bool = True) -> None:
        """Rows as they now stand in the store (every column). `sync`: on disk on return."""
        if rows:
            self._write(_line(table, "put", "rows", [dict(r) for r in rows]), sync)

    def delete(self, table: str, key: Mapping[str, object], sync: bool = True) -> None:
        self._write(_line(table, "del", "key", dict(key)), sync)

    def reply(self, row: Mapping[str, object]) -> None:
        """A paid reply the moment it arrives: in the kernel on return, fsynced by `sync`."""
        self._write(_line("oracle.replies", "put", "rows", [dict(row)]), sync=False)

    def current_segment(self) -> Path | None:
        """The segment this process is writing, if any."""
        return self._path

    def sync(self) -> None:
        with self._guard:
            if self._file is not None:
                os.fsync(self._file.fileno())

    def _write(self, line: str, sync: bool) -> None:
        data = line.encode()
        with self._guard:
            if self._file is None:
                self._open()
            self._file.write(data)
            self._file.flush()  # into the kernel now: what a SIGKILL cannot take away
            if sync:
                os.fsync(self._file.fileno())
            if self._file.tell() >= ROTATE_BYTES:
                self._rotate()

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._path = self.folder / f"{stamp}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._file = open(self._path, "ab")  # noqa: SIM115 (held until the process ends)
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _fsync_folder(self.folder)  # the new name survives a power cut too

    def _rotate(self) -> None:
        os.fsync(self._file.fileno())
        self._file.close()  # unlocked: an oracle client may replay and seal it meanwhile
        self._closed.append(self._path)
        self._file = self._path = None

    # -- the oracle client's bracket -----------------------------------------------------

    def client_started(self) -> None:
        with self._guard:
            self._open_clients += 1

    def client_finished(self, stored: bool) -> None:
        """`stored`: every reply the client logged is in the database."""
        with self._guard:
            self._open_clients -= 1
            self._unstored |= not stored

    def close(self) -> None:
        """At the end of the process: seal what this process wrote when every reply it
        holds is stored; otherwise leave it plain, for the next client to replay."""
        with self._guard:
            if self._file is not None:
                os.fsync(self._file.fileno())
                self._file.close()
                self._closed.append(self._path)
                self._file = self._path = None
            if self._open_clients or self._unstored:
                return
            for path in self._closed:
                _seal_unless_taken(path)
            self._closed = []


_ledgers: dict[str, Ledger] = {}
_ledgers_guard = threading.Lock()


def ledger_for(database: Path) -> Ledger:
    """The one writer of this process for `database`'s ledger."""
    key = str(database.resolve())
    with _ledgers_guard:
        if key not in _ledgers:
            _ledgers[key] = Ledger(ledger_folder(Path(key)))
        return _ledgers[key]


def _forget_in_child() -> None:
    """A forked child starts with no segment: the parent's stays the parent's (the child
    would otherwise write into it and compress it under the parent at its exit)."""
    global _ledgers_guard
    _ledgers_guard = threading.Lock()
    for ledger in _ledgers.values():
        ledger._guard = threading.Lock()
        ledger._file = ledger._path = None  # the parent's file object, left to the parent
        ledger._closed = []
        ledger._open_clients = 0
        ledger._unstored = False


os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def _close_all() -> None:
    for ledger in list(_ledgers.values()):
        try:
            ledger.close()
        except Exception:  # noqa: BLE001 (never fail a process's exit; the segment stays plain)
            pass


# -- reading ------------------------------------------------------------------------------


@dataclass
class Segment:
    path: Path
    events: list[dict]
    torn: str | None = None  # what could not be read at its end, when something could not


def _complete_lines(data: bytes) -> tuple[list[dict], str | None]:
    events: list[dict] = []
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or a line the writer never finished
    unreadable = []
    for number, line in enumerate(lines, 1):
        try:
            events.append(json.loads(line))
        except ValueError:  # damaged on disk: the lines around it still count
            unreadable.append(number)
    problems = [f"the last {len(tail)} bytes are an unfinished line"] if tail else []
    if unreadable:
        problems.insert(0, f"{len(unreadable)} lines are not JSON (line {unreadable[0]} first) and are skipped")
    return events, "; ".join(problems) or None


def _gunzip_tolerant(data: bytes) -> tuple[bytes, str | None]:
    """The bytes of every complete gzip member, then those of a torn last one."""
    out = bytearray()
    while data:
        decompressor = zlib.decompressobj(wbits=31)
        try:
            out += decompressor.decompress(data)
        except zlib.error as exc:
            return bytes(out), f"compressed data damaged ({exc})"
        if not decompressor.eof:
            return bytes(out), "compressed data cut short"
        data = decompressor.unused_data
    return bytes(out), None


def read_segment(path: Path) -> Segment:
    data = path.read_bytes()
    torn = None
    if path.name.endswith(".gz"):
        data, torn = _gunzip_tolerant(data)
    events, cut = _complete_lines(data)
    if cut:
        # A plain segment's unfinished last line is what a kill mid-write leaves: only the
        # compressed ones are complete by construction.
        torn = f"{torn}; {cut}" if torn else cut
    return Segment(path, events, torn)


def segment_paths(folder: Path) -> list[Path]:
    """Every segment, oldest first; a plain one whose compressed copy exists is skipped
    (a seal killed between its rename and its unlink)."""
    if not folder.is_dir():
        return []
    names = {p.name for p in folder.iterdir()}
    paths = []
    for name in sorted(names):
        if name.endswith(".jsonl.gz") or (name.endswith(".jsonl") and name + ".gz" not in names):
            paths.append(folder / name)
    return paths


def is_live(path: Path) -> bool:
    """Whether a process is writing the segment (holds its lock)."""
    if path.name.endswith(".gz"):
        return False
    try:
        with open(path, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except FileNotFoundError:
        return False
    return False


def orphans(folder: Path) -> Iterator[tuple[Segment, object]]:
    """Plain segments whose writer is gone, each with its lock taken (so no second replayer
    takes it): the caller stores their replies, then calls `finish_orphan`."""
    for path in segment_paths(folder):
        if path.name.endswith(".gz"):
            continue
        try:
            handle = open(path, "rb")  # noqa: SIM115 (closed by finish_orphan)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()  # its writer is alive
            continue
        if not path.exists():  # sealed by another replayer between listing and locking
            handle.close()
            continue
        yield read_segment(path), handle


def finish_orphan(segment: Segment, handle) -> None:
    try:
        seal(segment.path)
    finally:
        handle.close()


@dataclass
class LedgerState:
    """What the ledger says the registries and caches hold: per table, its rows by key."""

    tables: dict[str, dict[tuple, dict]] = field(default_factory=lambda: {t: {} for t in TABLES})
    segments: int = 0
    events: int = 0
    bytes: int = 0
    torn: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)

    def rows(self, table: str) -> list[dict]:
        return list(self.tables[table].values())


def read_ledger(folder: Path) -> LedgerState:
    """Every segment, replayed in the order its lines were written (their `at`)."""
    state = LedgerState()
    events: list[tuple[int, int, int, dict]] = []
    for number, path in enumerate(segment_paths(folder)):
        state.segments += 1
        state.bytes += path.stat().st_size
        if is_live(path):
            state.live.append(path.name)
        segment = read_segment(path)
        if segment.torn:
            state.torn.append(f"{path.name}: {segment.torn}")
        events.extend((event.get("at", 0), number, index, event) for index, event in enumerate(segment.events))
    events.sort(key=lambda item: item[:3])
    for _, _, _, event in events:
        table = event.get("t")
        if table not in TABLES:
            continue  # written by a newer version: not ours to restore
        state.events += 1
        keys = TABLES[table]
        rows = state.tables[table]
        if event.get("op") == "put":
            for row in event.get("rows", []):
                rows[tuple(row.get(k) for k in keys)] = row
        elif event.get("op") == "del":
            match = event.get("key", {})
            for key in [k for k, row in rows.items() if all(row.get(c) == v for c, v in match.items())]:
                del rows[key]
    return state


def logged(con, ledger: Ledger, table: str, sql: str, params: list | None = None) -> list[dict]:
    """Run a write with `RETURNING *` and put the rows it returns in the ledger, on disk
    before the caller's transaction commits."""
    cursor = con.execute(f"{sql} RETURNING *", params or [])
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    ledger.put(table, rows)
    return rows
