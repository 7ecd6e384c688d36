"""The one DuckDB database: connections, schema set-up from sql/*.sql, transactions.

DuckDB allows one writing process per file. The store is therefore held for reads and
writes, not for the work between them: a connection here is short-lived (open, read or
write, close), and while it is open its process holds an exclusive lock beside the database
(`<database>.lock`, POSIX byte-range locks: see _StoreLock). Other processes queue on that
lock (polling every 1 to 20 ms) instead of failing on DuckDB's own lock, so run workers,
`reflection run`, the daemon and the CLI's readers share the file without a Dagster pool;
the threads of one process share their process's hold, and the connections opened within
one hold share one open of the file (`Database.held`: every open replays the WAL). Nothing here is held while a step
waits on the network, trains, generates or scores: see benchmarks/store_write.py for what a
write costs on a large store.

A process executing a run keeps the file open for a moment after its last connection closed
(`Database.lingering`, LINGER_S), as long as no other process waits for it: a shard's run
reads and writes the store a dozen times, tens of milliseconds apart, and each open costs
15 to 30 ms. Another process's wait takes its turn (byte 0 of the lock), which the lingering
process sees within LINGER_POLL_S and lets the store go; so does the run's own end."""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import duckdb

from reflection_assets.engines.store.ledger import Ledger, ledger_for, ledger_folder, segment_paths
from reflection_assets.engines.store.queries import queries
from reflection_assets.errors import UserError

SQL_PACKAGE = "reflection_assets"  # its sql/ folder is package data: any install has it
SQL = queries("store_storage")

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
        self.guard = threading.Condition()
        self.count = 0
        self.fd: int | None = None
        self.read_only = False  # the mode of the connections open in this hold
        self.readers: dict[int, int] = {}  # thread -> its read-only connections open
        # What opening and checkpointing this store cost here (see Database._checkpoint_due).
        self.bare_open_s = BARE_OPEN_S
        self.replay_s = 0.0  # the WAL replay the first open of this hold paid
        self.checkpoint_s: float | None = None
        # DuckDB opens and closes of this file, one at a time in this process. A connect while
        # another thread closes the last connection can find DuckDB's instance half torn
        # down and open a second one, which refuses the file ("Unique file handle conflict":
        # three threads opening and closing in a loop hit it within a few hundred opens).
        self.handles = threading.Lock()
        # The hold kept after the last connection closed (Database.lingering): a connection
        # left open keeps DuckDB's open of the file, whose identity is checked before reuse.
        self.lingering = 0  # runs of this process that keep the store open between accesses
        self.anchor: duckdb.DuckDBPyConnection | None = None
        self.anchor_file: tuple[int, int] | None = None
        self.idle_until = 0.0
        self.watcher: threading.Thread | None = None
        self.opened = False  # whether the last acquire opened the file (not a lingering hold's)

    def acquire(self, timeout_s: float, database: Path, read_only: bool = False) -> bool:
        """Take the store for this process (or join this process's hold) and say in which
        mode to open it: DuckDB opens a file in one mode per process, so a read inside a
        hold that writes opens read-write, and a write waits for the reads open in other
        threads to close. A lingering hold is joined when its file is still the one at
        `database`, its mode serves, and no other process waits for the store."""
        global _waited_s
        asked = time.monotonic()
        me = threading.get_ident()
        with self.guard:
            while self.count and self.read_only and not read_only:
                if me in self.readers:
                    raise RuntimeError(f"{database}: a write inside this thread's read-only connection")
                self.guard.wait()
            self.opened = False
            if self.count == 0:
                if self.fd is not None and not self._reusable(database, read_only):
                    self._let_go()
                if self.fd is None:
                    self.fd = self._take(timeout_s, database)
                    self.read_only = read_only
                    self.opened = True
            self.count += 1
            if self.read_only:
                self.readers[me] = self.readers.get(me, 0) + 1
            _waited_s += time.monotonic() - asked
            return self.read_only

    def _reusable(self, database: Path, read_only: bool) -> bool:
        if self.anchor is None or (self.read_only and not read_only) or not self._turn_free():
            return False
        try:
            st = os.stat(database)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.anchor_file

    def _turn_free(self) -> bool:
        """Whether no other process waits for the store (a waiter holds the turn)."""
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self.TURN)
        except OSError:
            return False
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, self.TURN)
        return True

    def keep_open(self, connect: Callable[[], duckdb.DuckDBPyConnection], database: Path) -> None:
        """Called as the last connection of a hold closes: while a run lingers, keep DuckDB's
        open of the file with a connection of its own (`connect()`, made while the last one
        is still open, so it shares the open: a cursor would not keep it), for the next
        access of the run."""
        with self.guard:
            if not self.lingering or self.anchor is not None or self.count != 1:
                return
            try:
                st = os.stat(database)
            except OSError:
                return
            with self.handles:
                self.anchor = connect()
            self.anchor_file = (st.st_dev, st.st_ino)
            if self.watcher is None:
                self.watcher = threading.Thread(target=self._watch, name="store-linger", daemon=True)
                self.watcher.start()

    def linger(self, step: int) -> None:
        """A run of this process starts (+1) or ends (-1) keeping the store open between its
        accesses; when the last one ends, the store is let go now."""
        with self.guard:
            self.lingering = max(0, self.lingering + step)
            if not self.lingering and self.count == 0 and self.fd is not None:
                self._let_go()
            self.guard.notify_all()

    def forget_anchor(self) -> None:
        """The file at the path was replaced: close the open of the old one."""
        with self.guard:
            if self.count == 0 and self.fd is not None:
                self._let_go()
            else:
                self._close_anchor()

    def _watch(self) -> None:
        """Lets an idle lingering hold go once its time is up or another process waits."""
        with self.guard:
            while True:
                if self.anchor is not None and self.count == 0 and self.fd is not None:
                    if time.monotonic() >= self.idle_until or not self.lingering or not self._turn_free():
                        self._let_go()
                        continue
                    self.guard.wait(LINGER_POLL_S)
                else:
                    self.guard.wait()

    def _close_anchor(self) -> None:
        if self.anchor is not None:
            with self.handles:
                try:
                    self.anchor.close()
                except duckdb.Error:
                    pass  # a damaged store may not close cleanly; its users said so
            self.anchor = None
            self.anchor_file = None

    def _let_go(self) -> None:
        """Close the lingering open and give the store back (with the guard held, no
        connection open)."""
        self._close_anchor()
        if self.fd is not None:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, self.STORE)
            os.close(self.fd)
            self.fd = None
        self.guard.notify_all()

    def after_fork(self) -> None:
        """A forked child holds none of its parent's locks: forget the parent's hold."""
        self.guard = threading.Condition()
        self.handles = threading.Lock()
        self.count, self.fd, self.anchor, self.anchor_file, self.watcher = 0, None, None, None, None
        self.readers, self.lingering = {}, 0

    def last(self) -> bool:
        """Whether the one connection open is the caller's: closing it closes DuckDB's file."""
        return self.count == 1

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
        me = threading.get_ident()
        with self.guard:
            self.count -= 1
            if self.read_only and me in self.readers:
                self.readers[me] -= 1
                if not self.readers[me]:
                    del self.readers[me]
            if self.count == 0 and self.fd is not None:
                if self.anchor is not None and self.lingering:
                    self.idle_until = time.monotonic() + LINGER_S
                else:
                    self._let_go()
                self.guard.notify_all()


# A bare open of a store (no WAL to replay) measured 25 to 40 ms on 2 cores, whatever the
# store's size; a faster one seen here lowers it.
BARE_OPEN_S = 0.05
# How long a run's process keeps the store open after its last access (if no other process
# waits), and how often it looks for a waiter meanwhile: the wait another process may add.
LINGER_S = 0.5
LINGER_POLL_S = 0.005

_waited_s = 0.0  # how long this process's connections waited for the store, in all


def store_wait_s() -> float:
    """Seconds this process has waited for the store (another process held it), in all."""
    return _waited_s


_store_locks: dict[str, _StoreLock] = {}
_store_locks_guard = threading.Lock()


def _after_fork() -> None:
    global _store_locks_guard
    _store_locks_guard = threading.Lock()
    for lock in _store_locks.values():
        lock.after_fork()


def _let_all_go() -> None:
    for lock in list(_store_locks.values()):
        lock.linger(-lock.lingering)


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_let_all_go)


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


# The store's schemas (sql/000_schemas.sql). DuckDB names a database after its file, so a
# file named after one of them makes every qualified name ambiguous ("Ambiguous reference to
# catalog or schema").
SCHEMAS = ("registry", "raw", "oracle", "lineage", "training", "reflect", "bench", "selection")


class Database:
    def __init__(self, path: str | Path, lock_timeout_s: float = 300.0, config: dict | None = None):
        self.path = Path(path)
        if self.path.stem.lower() in SCHEMAS:
            raise StorageError(
                f"{self.path}: a store cannot be named {self.path.name}: DuckDB names a database after its "
                f"file, and {self.path.stem} is one of the store's schemas ({', '.join(SCHEMAS)}); "
                "name the file otherwise, e.g. reflection.duckdb"
            )
        self.lock_timeout_s = lock_timeout_s
        self.config = dict(config or {})  # DuckDB settings (memory_limit, threads...)
        self.restoring = False  # set by `reflection rebuild`: a new store beside a full ledger

    def ledger(self) -> Ledger:
        """Where this store's paid work is also kept (engines/store/ledger.py)."""
        return ledger_for(self.path)

    def _open(self, read_only: bool, handles: threading.Lock) -> tuple[duckdb.DuckDBPyConnection, float]:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                started = time.perf_counter()
                with handles:
                    con = duckdb.connect(str(self.path), read_only=read_only, config=self.config)
                return con, time.perf_counter() - started
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
                current = con.execute(SQL.schema_digest).fetchone()[0]
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
                con.execute(SQL.forget_schema_digest)
                con.execute(SQL.record_schema_digest, [digest])
                # DuckDB 1.5 cannot replay an ALTER TABLE from the WAL in a read-only open
                # ("Calling DatabaseManager::GetDefaultDatabase with no default database
                # set"), and closing no longer checkpoints (see connect): checkpoint now.
                con.execute(SQL.checkpoint)
            _schema_applied.add(key)

    def forget_schema(self) -> None:
        """The file at this path was replaced: apply the schema again on the next write."""
        with _schema_lock:
            _schema_applied.discard(str(self.path.resolve()))
        store_lock(self.path).forget_anchor()

    @contextmanager
    def lingering(self) -> Iterator[None]:
        """Keep the store open between this process's accesses for the block (a run), as long
        as no other process waits for it (see the module's docstring)."""
        self.linger_start()
        try:
            yield
        finally:
            self.linger_stop()

    def linger_start(self) -> None:
        store_lock(self.path).linger(+1)

    def linger_stop(self) -> None:
        store_lock(self.path).linger(-1)

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
        """A connection, open for the block. The first connection of a hold opens the file
        (and replays its WAL); connections opened while another of this process is open share
        DuckDB's open file and cost a fraction of a millisecond (see held)."""
        self._check_not_lost()
        if read_only and not self.path.exists():
            raise StorageError(f"{self.path}: no database yet; register a dataset first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = store_lock(self.path)
        read_only = lock.acquire(self.lock_timeout_s, self.path, read_only)
        try:
            first = lock.last() and lock.opened
            con, open_s = self._open(read_only, lock.handles)
            if first:
                lock.bare_open_s = min(lock.bare_open_s, open_s)
                lock.replay_s = open_s - lock.bare_open_s
            try:
                if not read_only:
                    # Closing does not checkpoint by itself: on a large store a checkpoint
                    # rewrites the primary-key indexes (1.5 s on a 0.8 GB store), which would
                    # sit on every write; the last close of a hold checkpoints when the WAL
                    # has grown to cost more to replay than that (_checkpoint_due).
                    con.execute(SQL.no_checkpoint_on_close)
                    self._ensure_schema(con)
                yield con
                if not read_only and lock.last() and self._checkpoint_due(lock):
                    started = time.perf_counter()
                    try:
                        con.execute(SQL.checkpoint)
                    except duckdb.Error as exc:  # another thread's transaction: the next close
                        if is_damage(exc):
                            raise
                    else:
                        lock.checkpoint_s = time.perf_counter() - started
                        lock.replay_s = 0.0
                # Only while a run lingers, after a clean close: the next access shares this open.
                lock.keep_open(lambda: duckdb.connect(str(self.path), read_only=read_only, config=self.config),
                               self.path)
            except duckdb.Error as exc:
                if is_damage(exc):
                    raise DamagedStore(self.path, f"damaged ({exc})") from None
                raise
            finally:
                try:
                    with lock.handles:
                        con.close()
                except duckdb.Error:
                    pass  # a damaged store may not close cleanly; what it said is raised above
        finally:
            lock.release()

    @staticmethod
    def _checkpoint_due(lock: _StoreLock) -> bool:
        """Whether to checkpoint at this close. Every open replays the WAL, at about 0.5 ms
        per commit whatever the commit's size (a WAL of 1,000 one-row commits: 0.4 to 0.6 s
        an open, on a 0.15 to 0.3 GB store; a bare open 25 ms), and a step opens the store
        several times, while a checkpoint is paid once (0.1 s on a small store, 0.7 to 1.3 s
        on those): checkpoint when the replay the hold's open paid reaches a quarter of what
        the last checkpoint here cost (of 0.2 s before one was measured). DuckDB's own
        checkpoint_threshold (16 MiB of WAL) still applies. benchmarks/store_opens.py measures
        it against no rule, side by side."""
        return lock.replay_s * 4 >= (lock.checkpoint_s if lock.checkpoint_s is not None else 0.2)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the store for a run of reads and writes with nothing slow between them (no
        oracle call, no model): the connections opened inside share one open of the file
        instead of each replaying the WAL. Never around a wait on the network or a model:
        other processes queue on the store meanwhile."""
        with self.connect():
            yield

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All or nothing: an exception inside rolls every statement back."""
        with self.connect() as con:
            con.execute(SQL.begin)
            try:
                yield con
            except BaseException:
                con.execute(SQL.rollback)
                raise
            con.execute(SQL.commit)
