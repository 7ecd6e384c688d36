"""Every private Dagster API this project uses, in one place (dagster is pinned to 1.13.x).
tests/unit/test_dagster_private.py fails loudly when an upgrade moves any of them.

- The run-worker health types, for `ReflectionRunLauncher`.
- A fix to how a run waits for a pool slot in Dagster's in-process executor: its loop does
  not sleep while a step waits for a slot (`interval_to_next_pending_claim_check` returns
  min(0, ...), so it polls without pause, a whole CPU core) and never looks at captured
  interrupts there, so SIGTERM and Ctrl-C are swallowed until the slot comes (measured: a
  `reflection run` behind a killed run could not be stopped by `timeout`). Patched, the wait
  sleeps between polls, says every `report_s` which run holds the pool and since when, and
  turns a captured interrupt into Dagster's own interruption: the run ends canceled and its
  place in the queue is given back. StorageResource installs it when a run of ours starts
  (its setup_for_execution); importing the definitions changes nothing in Dagster (a test).
  A custom executor cannot carry it: `execute_in_process`, which `reflection run` uses,
  replaces a job's executor with its own.
- Dagster's own staleness resolver (what the UI shows), for `reflection status`.
- One connection per SQLite event-log file, kept open (`install_pooled_event_log`). Dagster's
  SQLite event log makes a SQLAlchemy engine, opens a connection and closes it for every
  event it stores, and in WAL mode the last close of a file checkpoints it: 9 to 10 ms an
  event here, a third of a shard's run (a run stores about 54; measured in a 16-shard
  `reflection run`: 8.4 to 10.3 s of 27 to 31 s, pooled 4.6 to 4.7 s of 22). Patched, a
  process keeps one engine per file (the index and its last few runs' files), and
  checkpoints a run's file passively after each transaction: the UI follows a run's events
  by watching the run's `.db` file (SqliteEventLogStorageWatchdog), which the WAL alone would
  leave untouched; the index is never watched, and SQLite checkpoints it every 1,000 pages.
  `wipe` and `dispose` close the engines first. A new run's file is written from the bytes
  of the first one Dagster set up in the process (its `_initdb`: 50 to 60 ms a run).
  Installed with install_pool_wait, in the processes that execute runs; other processes keep
  Dagster's connection per event.
- A thread, not processes, mirrors a step's captured output (`install_threaded_log_tail`).
  Dagster's local compute log manager writes a step's stdout and stderr to files (what the
  UI shows) and mirrors each file to where the stream went by starting `tail -F` and a
  Python process that watches for the tail's orphaning: four processes for each capture
  (an in-process run captures its steps once), two of them Python interpreters. Patched, a
  thread of the run's process copies each file as it grows and, once the streams are
  restored, what is left (Dagster's tail polls every second and can miss the last lines).
  benchmarks/step_log_tail.py: 16 one-step runs, 3.51 s of CPU against 2.84 s (1.24x).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import dagster as dg
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleCauseCategory, StaleStatus
from dagster._core.execution import compute_logs
from dagster._core.execution.plan.active import ActiveExecution, _pool_key_for_step
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.partition_status_cache import AssetPartitionStatus
from dagster._time import get_current_datetime
from dagster._utils.interrupts import pop_captured_interrupt

from reflection_assets.engines.store.queries import queries

__all__ = [
    "install_pooled_event_log",
    "AssetPartitionStatus",
    "CheckRunHealthResult",
    "StaleCauseCategory",
    "StaleStatus",
    "WorkerStatus",
    "install_pool_wait",
    "pool_holders",
    "stale_resolver",
]

SQL = queries("sqlite_event_log")
POLL_S = 0.5
INTERRUPTED_WAITING = "interrupted (SIGTERM or Ctrl-C) while waiting for a pool slot"

_original_sleep = ActiveExecution.sleep_til_ready
_last_report: dict[str, float] = {}


def pool_holders(instance: dg.DagsterInstance, pool: str) -> tuple[int, list[tuple[str, str, datetime | None]]]:
    """(limit, [(run id, step key, since)]) of the slots of `pool` now claimed."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    since = {(p.run_id, p.step_key): p.assigned_timestamp for p in info.pending_steps if p.assigned_timestamp}
    return info.slot_count, [(s.run_id, s.step_key, since.get((s.run_id, s.step_key))) for s in info.claimed_slots]


def waiting_message(instance: dg.DagsterInstance, pool: str, step: str) -> str:
    limit, holders = pool_holders(instance, pool)
    now = datetime.now(timezone.utc)
    held = "; ".join(
        f"run {run_id[:8]} (step {step_key}"
        + (f", since {since:%H:%M:%S} UTC, {int((now - since).total_seconds())} s ago" if since else "")
        + ")"
        for run_id, step_key, since in holders
    ) or "nobody (the slot is being handed over)"
    return f"step {step} is waiting for a slot of pool {pool!r} (limit {limit}), held by {held}"


def install_pool_wait(report_s: float = 30.0, echo: Callable[[str], None] | None = None) -> None:
    """Patch the in-process executor's wait for pool slots (see the module docstring).
    Idempotent; `echo` also prints each report (default: standard error)."""
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))

    def sleep_til_ready(self: ActiveExecution) -> None:
        context = self._instance_concurrency_context
        if context is None or not context.has_pending_claims():
            _original_sleep(self)
            return
        instance, run_id = context._instance, context._run_id
        if pop_captured_interrupt():
            # A termination request first: Dagster then ends the run canceled, not failed.
            run = instance.get_run_by_id(run_id)
            if run is not None and run.status not in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED):
                instance.report_run_canceling(run, message=INTERRUPTED_WAITING)
            self.mark_interrupted()
            raise dg.DagsterExecutionInterruptedError(INTERRUPTED_WAITING)
        now = time.monotonic()
        if run_id not in _last_report or now - _last_report[run_id] >= report_s:
            _last_report[run_id] = now
            run = instance.get_run_by_id(run_id)
            for step in context.pending_claim_steps():
                message = waiting_message(instance, _pool_key_for_step(self.get_step_by_key(step)) or "?", step)
                echo(f"run {run_id[:8]}: {message}")
                if run is not None:
                    instance.report_engine_event(message, run)
        time.sleep(POLL_S)

    ActiveExecution.sleep_til_ready = sleep_til_ready  # type: ignore[method-assign]


def stale_resolver(instance: dg.DagsterInstance, defs: dg.Definitions) -> CachingStaleStatusResolver:
    """Dagster's own staleness (what the UI shows), built as its test utilities build it;
    it answers with StaleStatus and causes of StaleCauseCategory."""
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)


# The run files a process keeps an engine for, besides the index: a run writes its own and
# reads a few others (the runs before it, for data versions).
POOLED_RUN_FILES = 4
_original_sqlite = {name: getattr(SqliteEventLogStorage, name) for name in ("_connect", "wipe", "dispose")}


def _engines(storage: SqliteEventLogStorage) -> OrderedDict[str, Engine]:
    return storage.__dict__.setdefault("_reflection_engines", OrderedDict())


def _close_engines(storage: SqliteEventLogStorage) -> None:
    engines = _engines(storage)
    while engines:
        engines.popitem()[1].dispose()


def _keep_template(storage: SqliteEventLogStorage, engine: Engine, shard: str) -> None:
    """The bytes of a run's file Dagster just set up (tables, WAL mode, alembic stamp), all in
    the .db file, as the template of the next runs' files in this process."""
    with engine.connect() as conn:
        busy, frames, checkpointed = conn.exec_driver_sql(SQL.truncate_checkpoint).fetchone()
    if busy == 0 and frames == checkpointed:
        with open(storage.path_for_shard(shard), "rb") as file:
            storage.__dict__["_reflection_run_template"] = file.read()


def _create_from_template(storage: SqliteEventLogStorage, shard: str) -> bool:
    """A new run's file written from the template, instead of Dagster's set-up (an inspection,
    create_all and an alembic stamp: 50 to 60 ms a run). False when there is no template yet or
    the file exists."""
    template = storage.__dict__.get("_reflection_run_template")
    if template is None:
        return False
    path = storage.path_for_shard(shard)
    written = f"{path}.{os.getpid()}-{threading.get_ident()}.new"
    with open(written, "wb") as file:
        file.write(template)
    try:
        os.link(written, path)  # whole or not at all: another process never reads half a file
    except FileExistsError:
        return False
    finally:
        os.unlink(written)
    return True


def install_pooled_event_log(run_files: int = POOLED_RUN_FILES) -> None:
    """Patch Dagster's SQLite event log to keep one connection per file (see the module
    docstring). Idempotent."""

    @contextmanager
    def _connect(self: SqliteEventLogStorage, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engines = _engines(self)
            url = self.conn_string_for_shard(shard)
            engine = engines.pop(url, None)
            if engine is None:
                # One connection kept; _initdb takes a few more while it holds one.
                engine = create_engine(
                    url, poolclass=QueuePool, pool_size=1, max_overflow=4,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
                )
            engines[url] = engine  # the most recent last
            index = self.conn_string_for_shard(INDEX_SHARD_NAME)
            while len(engines) > run_files + (index in engines):
                oldest = next(url for url in engines if url != index)
                engines.pop(oldest).dispose()
            if shard not in self._initialized_dbs:
                if shard == INDEX_SHARD_NAME or not _create_from_template(self, shard):
                    new = shard != INDEX_SHARD_NAME and not os.path.exists(self.path_for_shard(shard))
                    self._initdb(engine)
                    if new:
                        _keep_template(self, engine, shard)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn
                # What the transaction wrote reaches the run's .db file, which the UI watches.
                # The index is read, never watched: SQLite's own checkpoint every 1,000 pages
                # of WAL is enough there (a checkpoint per event: a tenth of a shard's run).
                if shard != INDEX_SHARD_NAME:
                    conn.exec_driver_sql(SQL.passive_checkpoint)

    def wipe(self: SqliteEventLogStorage) -> None:
        with self._db_lock:
            _close_engines(self)  # wipe deletes the run files: nothing may keep one open
        _original_sqlite["wipe"](self)

    def dispose(self: SqliteEventLogStorage) -> None:
        with self._db_lock:
            _close_engines(self)
        _original_sqlite["dispose"](self)

    SqliteEventLogStorage._connect = _connect  # type: ignore[method-assign]
    SqliteEventLogStorage.wipe = wipe  # type: ignore[method-assign]
    SqliteEventLogStorage.dispose = dispose  # type: ignore[method-assign]


# How often the thread that mirrors a step's captured output looks for more.
TAIL_POLL_S = 0.05
_original_posix_tail = compute_logs.execute_posix_tail


@contextmanager
def _threaded_tail(path: str, stream) -> Iterator[tuple[None, None]]:
    """What compute_logs.execute_posix_tail does (the file at `path`, as it grows, to where
    `stream` goes before the step redirects it), in a thread of this process."""
    out = os.dup(compute_logs._fileno(stream) or 1)
    stop = threading.Event()

    def copy() -> None:
        with open(path, "rb") as source:
            while True:
                stopping = stop.is_set()
                chunk = source.read(1 << 16)
                if chunk:
                    try:
                        while chunk:
                            chunk = chunk[os.write(out, chunk):]
                    except OSError:
                        return  # where the output went is gone (a closed pipe): the file keeps it
                elif stopping:
                    return
                else:
                    stop.wait(TAIL_POLL_S)

    thread = threading.Thread(target=copy, name="compute-log-tail", daemon=True)
    thread.start()
    try:
        yield (None, None)
    finally:
        stop.set()
        thread.join(timeout=30)
        if not thread.is_alive():  # one stuck on a full pipe keeps its descriptor
            os.close(out)


def install_threaded_log_tail() -> None:
    """Patch how a step's captured output is mirrored (see the module docstring). Idempotent."""
    compute_logs.execute_posix_tail = _threaded_tail
