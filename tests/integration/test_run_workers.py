"""Telling a dead run from a live one, and recovering the dead: on a test instance, with real
processes (alive, killed and reaped, killed and not reaped, a PID that started after the run)."""

import os
import signal
import socket
import subprocess
import sys
import time

import dagster as dg

from reflection_assets.dagster_private import WorkerStatus
from reflection_assets.headless.run_workers import (
    HOST_TAG,
    PID_TAG,
    ReflectionRunLauncher,
    Worker,
    dead_runs,
    is_dead,
    process_alive,
    recover,
    worker_of,
)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def started_run(instance: dg.DagsterInstance, tags: dict[str, str]) -> dg.DagsterRun:
    run = instance.create_run_for_job(dg.GraphDefinition(name="g").to_job(), tags=tags)
    instance.handle_run_event(run.run_id, dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=run.job_name))
    return instance.get_run_by_id(run.run_id)


def test_process_alive_tells_live_dead_zombie_and_reused_pids_apart():
    assert process_alive(os.getpid(), time.time())
    assert not process_alive(dead_pid())
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(zombie.pid, signal.SIGKILL)
        time.sleep(0.3)  # dead, not reaped: still in the process table
        assert not process_alive(zombie.pid)
    finally:
        zombie.wait()
    # A process that started after the run was known to have its worker is not that worker.
    assert not process_alive(os.getpid(), known_since=time.time() - 3600 * 24 * 365)


def test_a_worker_elsewhere_or_of_unknown_pid_is_never_called_dead():
    assert not is_dead(Worker("some-other-host", dead_pid(), None))
    assert not is_dead(Worker(socket.gethostname(), None, None))
    assert is_dead(Worker(socket.gethostname(), dead_pid(), None))


def test_recover_fails_dead_runs_and_frees_their_slots(instance):
    here = socket.gethostname()
    dead = started_run(instance, {HOST_TAG: here, PID_TAG: str(dead_pid())})
    alive = started_run(instance, {HOST_TAG: here, PID_TAG: str(os.getpid())})
    elsewhere = started_run(instance, {HOST_TAG: "another-machine", PID_TAG: "1"})
    storage = instance.event_log_storage
    storage.set_concurrency_slots("gpu", 1)
    assert storage.claim_concurrency_slot("gpu", dead.run_id, "reflected_instructions").is_claimed
    assert not storage.claim_concurrency_slot("gpu", alive.run_id, "raw_dataset").is_claimed  # queued

    assert [d.run.run_id for d in dead_runs(instance)] == [dead.run_id]
    recovery = recover(instance)
    assert [d.run.run_id for d in recovery.failed] == [dead.run_id]
    assert recovery.freed == {dead.run_id: 1}
    assert "ended without finishing: killed or crashed" in recovery.failed[0].message
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    for run in (alive, elsewhere):
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    # The live run, queued behind the dead one, now gets the slot.
    assert storage.claim_concurrency_slot("gpu", alive.run_id, "raw_dataset").is_claimed
    assert recover(instance).failed == []  # nothing left to do


def test_the_launchers_health_check_reads_the_code_servers_pid(instance):
    """A run started by a code server: the PID is in its "Started process for run" event."""
    launcher = ReflectionRunLauncher()
    launcher.register_instance(instance)
    run = started_run(instance, {HOST_TAG: socket.gethostname()})
    pid = dead_pid()
    instance.report_engine_event(f"Started process for run (pid: {pid}).", run)
    assert worker_of(instance, run).pid == pid
    health = launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.FAILED and f"process {pid}" in health.msg
    live = started_run(instance, {HOST_TAG: socket.gethostname()})
    instance.report_engine_event(f"Started process for run (pid: {os.getpid()}).", live)
    assert launcher.check_run_worker_health(live).status == WorkerStatus.RUNNING
    assert launcher.supports_check_run_worker_health
