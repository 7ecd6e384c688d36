"""Which process runs each Dagster run, whether that process is still alive, and recovering
the runs whose process died without finishing (SIGKILL, the out-of-memory killer, a lost
machine): they are marked failed and give back their pool slots, so the next run does not
wait forever behind them.

A run launched by `reflection run` carries its host and PID as tags. A run launched through
a code server (the UI, the daemon) is tagged with its host by `ReflectionRunLauncher`, and
its PID is the one Dagster logs when it starts the process. A PID is trusted only if that
process started before the run did: a PID reused by a newer process is a dead worker."""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from reflection_assets.dagster_private import CheckRunHealthResult, WorkerStatus

HOST_TAG = "reflection/host"
PID_TAG = "reflection/pid"
GRPC_INFO_TAG = ".dagster/grpc_info"
# The code server logs this when it starts a run's process (dagster/_grpc/impl.py).
_STARTED = re.compile(r"^Started process for run \(pid: (\d+)\)")
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}
ACTIVE = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
          dg.DagsterRunStatus.CANCELING]
# The start time of a process is known to the second (boot time) plus a clock tick.
_CLOCK_SLACK_S = 2.0


def launch_tags() -> dict[str, str]:
    """Tags for a run executed in this very process."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


@dataclass(frozen=True)
class Worker:
    host: str | None
    pid: int | None
    known_since: float | None  # the worker process existed by this time (a timestamp)

    def describe(self) -> str:
        return f"process {self.pid if self.pid is not None else '?'} on host {self.host or '?'}"


@dataclass(frozen=True)
class DeadRun:
    run: dg.DagsterRun
    worker: Worker

    @property
    def message(self) -> str:
        return f"{self.worker.describe()} ended without finishing: killed or crashed"


def _process_start(pid: int) -> tuple[float | None, bool]:
    """(start timestamp, zombie) of a process, from /proc where there is one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, StopIteration, ValueError):
        return None, False
    fields = stat[stat.rindex(")") + 2 :].split()
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK"), fields[0] == "Z"


def process_alive(pid: int, known_since: float | None = None) -> bool:
    """Whether `pid` is a live process that existed by `known_since` (not a reused PID)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists; it belongs to someone else
    started, zombie = _process_start(pid)
    if zombie:
        return False  # killed, not yet reaped by its parent
    return started is None or known_since is None or started <= known_since + _CLOCK_SLACK_S


def worker_of(instance: dg.DagsterInstance, run: dg.DagsterRun) -> Worker:
    host = run.tags.get(HOST_TAG)
    record = instance.get_run_record_by_id(run.run_id)
    created = record.create_timestamp.timestamp() if record else None
    if PID_TAG in run.tags:
        return Worker(host, int(run.tags[PID_TAG]), created)
    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        found = _STARTED.match(entry.message or "")
        if found:
            return Worker(host, int(found.group(1)), entry.timestamp)
    return Worker(host, None, created)


def is_dead(worker: Worker) -> bool:
    """Dead only when we can tell: a worker on another host, or of unknown PID, is not."""
    if worker.pid is None or worker.host != socket.gethostname():
        return False
    return not process_alive(worker.pid, worker.known_since)


def dead_runs(instance: dg.DagsterInstance) -> list[DeadRun]:
    """Runs that this instance says are in progress but whose process is gone."""
    found = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE)):
        if run.status == dg.DagsterRunStatus.NOT_STARTED and PID_TAG not in run.tags:
            continue  # created for a launcher that has not started it yet
        worker = worker_of(instance, run)
        if is_dead(worker):
            found.append(DeadRun(run, worker))
    return found


@dataclass(frozen=True)
class Recovery:
    failed: list[DeadRun]
    freed: dict[str, int]  # run id -> slots and queued claims given back


def held_slots(instance: dg.DagsterInstance) -> dict[str, int]:
    """Run id -> pool slots it holds or is queued for."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    counts: dict[str, int] = {}
    for run_id in storage.get_concurrency_run_ids():
        counts[run_id] = counts.get(run_id, 0) + 1
    return counts


def recover(instance: dg.DagsterInstance) -> Recovery:
    """Mark every dead run failed (canceled, if it was being canceled) and give back the pool
    slots held by runs that are no longer in progress: the dead ones and any that ended
    without freeing theirs (what the daemon would free, when no daemon runs)."""
    dead = dead_runs(instance)
    for entry in dead:
        if entry.run.status == dg.DagsterRunStatus.CANCELING:
            instance.report_run_canceled(entry.run, entry.message)
        else:
            instance.report_run_failed(entry.run, entry.message)
    freed: dict[str, int] = {}
    holders = held_slots(instance)
    if holders:
        finished = {
            run.run_id
            for run in instance.get_runs(filters=dg.RunsFilter(run_ids=list(holders)))
            if run.is_finished
        }
        for run_id in finished:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            freed[run_id] = holders[run_id]
    return Recovery(dead, freed)


class ReflectionRunLauncher(dg.DefaultRunLauncher):
    """Dagster's default launcher (each run in a process of the code server) plus what run
    monitoring needs to notice a worker that died: the run is tagged with the host its
    process runs on, and the health check asks whether that process is alive. Without it,
    a run whose worker was killed together with its code server stays STARTED, holding
    its pool slot, until someone frees it by hand."""

    def launch_run(self, context) -> None:
        super().launch_run(context)
        run = context.dagster_run
        grpc = json.loads(self._instance.get_run_by_id(run.run_id).tags.get(GRPC_INFO_TAG, "{}"))
        host = grpc.get("host") or ""
        if host in _LOCAL_HOSTS or "socket" in grpc:
            host = socket.gethostname()
        self._instance.add_run_tags(run.run_id, {HOST_TAG: host})

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        worker = worker_of(self._instance, run)
        if is_dead(worker):
            return CheckRunHealthResult(WorkerStatus.FAILED, DeadRun(run, worker).message)
        # Alive, or on a host we cannot look at: monitoring must not fail what may be running.
        return CheckRunHealthResult(WorkerStatus.RUNNING, worker.describe())
