"""The one DuckDB database: connections, schema set-up from sql/*.sql, transactions.

DuckDB allows one writing process per file. Connections here are short-lived (open, work,
close) and wait for a lock held by another process instead of failing at once, so the CLI,
runs launched from the UI and tests can share the file; Dagster's `duckdb` pool keeps
writers from queueing up behind each other in the first place."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import duckdb

from reflection_assets.errors import UserError

SQL_PACKAGE = "reflection_assets"  # its sql/ folder is package data: any install has it

_schema_applied: set[str] = set()
_schema_lock = threading.Lock()


class StorageError(UserError):
    """The database cannot be opened or set up. The message is meant for the user."""


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


class Database:
    def __init__(self, path: str | Path, lock_timeout_s: float = 300.0, config: dict | None = None):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.config = dict(config or {})  # DuckDB settings (memory_limit, threads...)

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=self.config)
            except duckdb.IOException as exc:
                if not _is_lock_conflict(exc):
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
            for file in sql_files():
                try:
                    con.execute(file.read_text())
                except duckdb.Error as exc:
                    raise StorageError(f"{file.name} (the package's sql/): failed to apply ({exc})") from None
            _schema_applied.add(key)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if read_only and not self.path.exists():
            raise StorageError(f"{self.path}: no database yet; register a dataset first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._open(read_only)
        try:
            if not read_only:
                self._ensure_schema(con)
            yield con
        finally:
            con.close()

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
