"""The one DuckDB database: connections, schema set-up from sql/*.sql, transactions.

DuckDB allows one writing process per file. The store is therefore held for reads and
writes, not for the work between them: a connection here is short-lived (open, read or
write, close), and while it is open its process holds an exclusive lock beside the database
(`<database>.lock`, POSIX byte-range locks: engines/store/hold.py). Other processes queue on that
lock (polling every 1 to 20 ms) instead of failing on DuckDB's own lock, so run workers,
`reflection run`, the daemon and the CLI's readers share the file without a Dagster pool;
the threads of one process share their process's hold, and the connections opened within
one hold share one open of the file (`Database.held`: every open replays the WAL). Nothing here is held while a step
waits on the network, trains, generates or scores: see benchmarks/store_write.py for what a
write costs on a large store. The process's hold, and how a run keeps the file open between
its accesses while no other process waits: engines/store/hold.py."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import duckdb

from reflection_assets.engines.store.hold import (  # noqa: F401 - StorageError and store_wait_s are public here
    StorageError,
    _StoreLock,
    store_lock,
    store_wait_s,
)
from reflection_assets.engines.store.ledger import Ledger, ledger_for, ledger_folder, segment_paths
from reflection_assets.engines.store.no_pandas import duckdb_scope, install as install_no_pandas
from reflection_assets.engines.store.queries import queries

SQL_PACKAGE = "reflection_assets"  # its sql/ folder is package data: any install has it
SQL = queries("store_storage")

_schema_applied: set[str] = set()
_schema_lock = threading.Lock()
install_no_pandas()


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
        DuckDB's open file and cost a fraction of a millisecond (see held). DuckDB does not
        import pandas for it (engines/store/no_pandas.py)."""
        with duckdb_scope(), self._connect(read_only) as con:
            yield con

    @contextmanager
    def _connect(self, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
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
