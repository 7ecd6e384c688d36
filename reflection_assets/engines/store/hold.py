"""This process's hold on the store: the lock beside the DuckDB file, shared by its threads
and kept for a moment between a run's accesses.

engines/store/storage.py says why the store is held for reads and writes only.

A process executing a run keeps the file open for a moment after its last connection closed
(`Database.lingering`, LINGER_S), as long as no other process waits for it: a shard's run
reads and writes the store a dozen times, tens of milliseconds apart, and each open costs
15 to 30 ms. Another process's wait takes its turn (byte 0 of the lock), which the lingering
process sees within LINGER_POLL_S and lets the store go; so does the run's own end."""

from __future__ import annotations

import atexit
import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from reflection_assets.errors import UserError


class StorageError(UserError):
    """The database cannot be opened or set up. The message is meant for the user."""


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
