"""The one DuckDB database: connections, schema set-up from sql/*.sql, transactions.

DuckDB allows one writing process per file. The store is therefore held for reads and
writes, not for the work between them: a connection here is short-lived (open, read or
write, close), and while it is open its process holds an exclusive lock beside the database
(`<database>.lock`, POSIX byte-range locks: see _StoreLock). Other processes queue on that
lock (polling every 1 to 20 ms) instead of failing on DuckDB's own lock, so run workers,
`reflection run`, the daemon and the CLI's readers share the file without a Dagster pool;
the threads of one process share their process's hold. Nothing here is held while a step
waits on the network, trains, generates or scores: see benchmarks/store_write.py for what a
write costs on a large store."""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import duckdb

from reflection_assets.engines.ledger import Ledger, ledger_for, ledger_folder, segment_paths
from reflection_assets.errors import UserError

SQL_PACKAGE = "reflection_assets"  # its sql/ folder is package data: any install has it

_schema_applied: set[str] = set()
_schema_lock = threading.Lock()


class StorageError(UserError):
    """The database cannot be opened or set up. The message is meant for the user."""


class DamagedStore(StorageError):
    """The database file is damaged or gone while its ledger holds work: the way back is
    `reflection rebuild`."""

    def __init__(self, path: Path, problem: str):
        super().__init__(damaged_message(path, problem))
        self.problem = problem


# What DuckDB says when a file's bytes are not what it wrote (checksums, headers, blocks it
# cannot deserialize); an error while opening the file counts whatever it says.
_DAMAGE_MARKERS = ("corrupt", "checksum", "not a valid duckdb database", "serializ", "internal error",
                   "fatal error", "invalidated", "failed to read", "could not read")


def is_damage(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.Error) and any(m in str(exc).lower() for m in _DAMAGE_MARKERS)


def damaged_message(path: Path, problem: str) -> str:
    return (
        f"{path}: {problem}. Nothing paid is lost: every oracle reply, batch record and registry "
        f"is also in {ledger_folder(path)}. `reflection doctor` checks the store; "
        "`reflection rebuild` moves the file aside and restores a new store from the ledger"
    )


def sql_files() -> list[Traversable]:
    """The DDL and views, in file-name order (000_ first), from the installed package."""
    folder = resources.files(SQL_PACKAGE) / "sql"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name) if folder.is_dir() else []
    if not files:
        raise StorageError(f"{folder}: no .sql files; the package was installed without its sql/ folder")
    return files


class _StoreLock:
    """This process's hold on the store: taken by the first connection a thread of the
    process opens and given back when the last one closes.

    Two byte-range locks of `<database>.lock`: byte 1 is the store; byte 0 is the turn, held
    by whoever waits for the store next. A process that lets the store go and wants it again
    at once must first wait for the turn, so a reader is not starved by a writer in a loop.
    The holder writes its pid into the file, so a wait that runs out can say who held it."""

    STORE, TURN = 1, 0

    def __init__(self, path: Path):
        self.path = path
        self.guard = threading.Lock()
        self.count = 0
        self.fd: int | None = None

    def acquire(self, timeout_s: float, database: Path) -> None:
        global _waited_s
        asked = time.monotonic()
        with self.guard:
            if self.count == 0:
                self.fd = self._take(timeout_s, database)
            self.count += 1
            _waited_s += time.monotonic() - asked

    def _take(self, timeout_s: float, database: Path) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + timeout_s
        try:
            self._wait(fd, self.TURN, deadline, timeout_s, database)
            try:
                self._wait(fd, self.STORE, deadline, timeout_s, database)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, self.TURN)
        except BaseException:
            os.close(fd)
            raise
        os.pwrite(fd, f"{os.getpid():<12d}".encode(), 16)
        return fd

    def _wait(self, fd: int, byte: int, deadline: float, timeout_s: float, database: Path) -> None:
        delay = 0.001
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
                return
            except OSError:  # EAGAIN or EACCES: another process has it
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 12, 16).decode(errors="replace").strip() or "?"
                    raise StorageError(
                        f"{database}: held by process {holder} for over {timeout_s:.0f} s "
                        f"(its lock: {self.path}); a read or write takes milliseconds, so that "
                        "process is stuck: stop it"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)

    def release(self) -> None:
        with self.guard:
            self.count -= 1
            if self.count == 0 and self.fd is not None:
                fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, self.STORE)
                os.close(self.fd)
                self.fd = None


_waited_s = 0.0  # how long this process's connections waited for the store, in all


def store_wait_s() -> float:
    """Seconds this process has waited for the store (another process held it), in all."""
    return _waited_s


_store_locks: dict[str, _StoreLock] = {}
_store_locks_guard = threading.Lock()


def store_lock(database: Path) -> _StoreLock:
    """The one lock object of this process for `database`."""
    key = str(database.resolve())
    with _store_locks_guard:
        if key not in _store_locks:
            _store_locks[key] = _StoreLock(Path(key + ".lock"))
        return _store_locks[key]


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


class Database:
    def __init__(self, path: str | Path, lock_timeout_s: float = 300.0, config: dict | None = None):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.config = dict(config or {})  # DuckDB settings (memory_limit, threads...)
        self.restoring = False  # set by `reflection rebuild`: a new store beside a full ledger

    def ledger(self) -> Ledger:
        """Where this store's paid work is also kept (engines/ledger.py)."""
        return ledger_for(self.path)

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=self.config)
            except duckdb.Error as exc:
                if not (isinstance(exc, duckdb.IOException) and _is_lock_conflict(exc)):
                    if is_damage(exc) or (self.path.exists() and not isinstance(exc, duckdb.IOException)):
                        raise DamagedStore(self.path, f"damaged, it cannot be opened ({exc})") from None
                    raise StorageError(f"{self.path}: cannot open the database ({exc})") from None
                if time.monotonic() >= deadline:
                    raise StorageError(
                        f"{self.path}: still locked by another process after "
                        f"{self.lock_timeout_s:.0f} s ({exc}); wait for the run that holds it "
                        "or stop it"
                    ) from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)

    def _ensure_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        key = str(self.path.resolve())
        with _schema_lock:
            if key in _schema_applied:
                return
            files = [(file.name, file.read_text()) for file in sql_files()]
            digest = hashlib.sha256("\0".join(f"{name}\0{text}" for name, text in files).encode()).hexdigest()
            try:
                current = con.execute("SELECT max(sql_sha256) FROM registry.schema_applied").fetchone()[0]
            except duckdb.CatalogException:  # a new store, or one made before this table
                current = None
            if current != digest:
                for name, text in files:
                    try:
                        con.execute(text)
                    except duckdb.Error as exc:
                        if is_damage(exc):
                            raise
                        raise StorageError(f"{name} (the package's sql/): failed to apply ({exc})") from None
                con.execute("DELETE FROM registry.schema_applied")
                con.execute("INSERT INTO registry.schema_applied (sql_sha256) VALUES (?)", [digest])
                # DuckDB 1.5 cannot replay an ALTER TABLE from the WAL in a read-only open
                # ("Calling DatabaseManager::GetDefaultDatabase with no default database
                # set"), and closing no longer checkpoints (see connect): checkpoint now.
                con.execute("CHECKPOINT")
            _schema_applied.add(key)

    def forget_schema(self) -> None:
        """The file at this path was replaced: apply the schema again on the next write."""
        with _schema_lock:
            _schema_applied.discard(str(self.path.resolve()))

    def _check_not_lost(self) -> None:
        """A missing store beside a ledger that holds work was lost, not never made: making
        a new empty one would buy every reply again."""
        if self.restoring or self.path.exists():
            return
        mine = self.ledger().current_segment()  # this process may log before its first write
        segments = [p for p in segment_paths(ledger_folder(self.path)) if p != mine]
        if segments:
            raise DamagedStore(self.path, f"missing, although its ledger holds {len(segments)} segments")

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        self._check_not_lost()
        if read_only and not self.path.exists():
            raise StorageError(f"{self.path}: no database yet; register a dataset first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = store_lock(self.path)
        lock.acquire(self.lock_timeout_s, self.path)
        try:
            con = self._open(read_only)
            try:
                if not read_only:
                    # Closing does not checkpoint: on a large store a checkpoint rewrites the
                    # primary-key indexes (1.5 s on a 0.8 GB store), which would sit on every
                    # write. The WAL is replayed on the next open (tens of ms per MB) and
                    # checkpointed when it passes checkpoint_threshold (16 MiB by default).
                    con.execute("PRAGMA disable_checkpoint_on_shutdown")
                    self._ensure_schema(con)
                yield con
            except duckdb.Error as exc:
                if is_damage(exc):
                    raise DamagedStore(self.path, f"damaged ({exc})") from None
                raise
            finally:
                try:
                    con.close()
                except duckdb.Error:
                    pass  # a damaged store may not close cleanly; what it said is raised above
        finally:
            lock.release()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All or nothing: an exception inside rolls every statement back."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
