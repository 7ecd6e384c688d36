"""A crashed run never blocks the next one. A real `reflection run` and a daemon-launched
run worker are killed with SIGKILL in the middle of reflected_instructions, against the
scripted oracle at 200 ms a request with hundreds in flight; the next materialization then
completes, every record ends with an outcome, and the replies bought twice are only those
that were on the wire when the process died."""

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from reflection_assets.engines.store.ledger import ledger_folder, read_segment, segment_paths
from tests.conftest import alpaca_rows
from tests.e2e.dagster_dev import BIN, dagster_dev, graphql, launch_partition_run
from tests.fakes import reflection_oracle
from tests.fakes.openai_server import FakeOpenAI

RECORDS = 600
IN_FLIGHT = 256


def make_env(home: Path, server: FakeOpenAI) -> dict:
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        REFLECTION_SHARDS="1",
        REFLECTION_ORACLE_BACKEND="openai",
        REFLECTION_ORACLE_MODEL="gpt-4o-mini",
        REFLECTION_ORACLE_BASE_URL=server.base_url,
        REFLECTION_ORACLE_API_KEY="sk-test-crash-0123456789",
        REFLECTION_ORACLE_MAX_CONCURRENCY=str(IN_FLIGHT),
        REFLECTION_POOL_REPORT_S="2",
    )
    for name in ("REFLECTION_DUCKDB", "REFLECTION_ARTIFACTS"):
        env.pop(name, None)
    return env


def reflection(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "reflection"), *args], capture_output=True, text=True, env=env, timeout=timeout)


def prepare(raw_home, env: dict) -> None:
    """Dataset `h` registered and its raw_dataset materialized in env's home (a copy)."""
    raw_home(Path(env["DAGSTER_HOME"]), "h", alpaca_rows(RECORDS), int(env["REFLECTION_SHARDS"]))


def wait_for(predicate, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(step)
    return value


def rebought(server: FakeOpenAI) -> int:
    """Requests the server answered more than once: what the kill made us pay twice."""
    return sum(count - 1 for count in server.by_body.values() if count > 1)


def phase_one_outcomes(home: Path) -> Counter:
    with duckdb.connect(str(home / "reflection.duckdb"), read_only=True) as con:
        return Counter(dict(con.execute("SELECT outcome, count(*) FROM reflect.instructions GROUP BY 1").fetchall()))


def scripted_server() -> FakeOpenAI:
    return FakeOpenAI(
        latency_s=0.2, jitter_s=0.05, responder=reflection_oracle.respond, plan=reflection_oracle.plan
    )


def test_a_killed_reflection_run_is_recovered_by_the_next(tmp_path, raw_home):
    home = tmp_path / "home"
    with scripted_server() as server:
        env = make_env(home, server)
        prepare(raw_home, env)
        child = subprocess.Popen(
            [str(BIN / "reflection"), "run", "--dataset", "h", "--select", "reflected_instructions"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: server.answered >= RECORDS // 2, 120, "half of the replies")
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        answered_before = server.answered

        status = reflection("status", env=env)
        assert status.returncode == 0, status.stderr
        assert "runs whose process is gone" in status.stdout
        assert f"process {child.pid} on host" in status.stdout and "killed or crashed" in status.stdout

        rerun = reflection("run", "--dataset", "h", "--select", "reflected_instructions", env=env, timeout=180)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "recovered run" in rerun.stderr and f"process {child.pid}" in rerun.stderr
        twice = rebought(server)
    print(f"\nSIGKILL after {answered_before} of {RECORDS} replies, {IN_FLIGHT} in flight: "
          f"{twice} replies bought twice")
    assert phase_one_outcomes(home) == Counter({"ok": RECORDS})  # no record lost
    assert len(server.by_body) == RECORDS
    assert twice <= IN_FLIGHT  # only what was on the wire when it died
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name="recycle_shards", tags={"reflection/pid": str(child.pid)}))
        assert [r.status for r in runs] == [dg.DagsterRunStatus.FAILURE]
    # The ledger holds every stored reply exactly once: the killed run's segment was read up
    # to its last line and stored by the rerun, which logged only what it bought itself.
    logged = [row["request_key"] for path in segment_paths(ledger_folder(home / "reflection.duckdb"))
              for event in read_segment(path).events if event["t"] == "oracle.replies" for row in event["rows"]]
    with duckdb.connect(str(home / "reflection.duckdb"), read_only=True) as con:
        stored = {key for (key,) in con.execute("SELECT request_key FROM oracle.replies").fetchall()}
    assert len(logged) == len(set(logged)) == len(stored) == RECORDS and set(logged) == stored


def test_a_run_waiting_for_the_pool_reports_and_stops_on_sigterm(tmp_path, raw_home):
    """student_scores runs a model, so it waits for the `gpu` pool; here the pool's one slot
    is claimed in the instance for a training step (a reproducible holder: a real one would
    train a model for the length of the test)."""
    home = tmp_path / "home"
    with scripted_server() as server:
        env = make_env(home, server)
        prepare(raw_home, env)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("gpu", 1)
        assert storage.claim_concurrency_slot("gpu", "0123456789abcdef-holder", "baseline_adapter").is_claimed
        waiter = subprocess.Popen(
            [str(BIN / "reflection"), "run", "--dataset", "h", "--select", "student_scores"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(waiter.stdout), daemon=True)
        reader.start()
        try:
            wait_for(lambda: sum("is waiting for a slot of pool 'gpu'" in line for line in lines) >= 2,
                     120, "two reports at REFLECTION_POOL_REPORT_S=2")
            started = time.monotonic()
            waiter.send_signal(signal.SIGTERM)
            waiter.wait(timeout=30)
            stopped_in = time.monotonic() - started
        finally:
            waiter.kill()
            reader.join(timeout=10)
            storage.free_concurrency_slots_for_run("0123456789abcdef-holder")
    output = "".join(lines)
    reports = [line for line in output.splitlines() if "is waiting for a slot of pool 'gpu'" in line]
    assert "held by run 01234567 (step baseline_adapter" in reports[0], output
    assert waiter.returncode == 130 and "interrupted" in output
    assert stopped_in < 10
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [waited] = instance.get_runs(filters=dg.RunsFilter(job_name="recycle_shards", tags={"reflection/pid": str(waiter.pid)}))
        assert waited.status == dg.DagsterRunStatus.CANCELED
        info = instance.event_log_storage.get_concurrency_info("gpu")
        assert waited.run_id not in {s.run_id for s in info.claimed_slots} | {p.run_id for p in info.pending_steps}


RUN_STATUS = '{ runOrError(runId: "%s") { ... on Run { status } } }'


def test_a_killed_daemon_run_worker_is_failed_and_blocks_nothing(tmp_path, raw_home):
    home = tmp_path / "home"
    with scripted_server() as server:
        env = make_env(home, server)
        prepare(raw_home, env)
        with dagster_dev(env) as port:
            run_id = launch_partition_run(port, "recycle_shards", ["reflected_instructions"], {"dataset": "h", "shard": "00"})
            wait_for(lambda: server.answered >= RECORDS // 3, 180, "a third of the replies")
            with dg.DagsterInstance.from_config(str(home)) as instance:
                from reflection_assets.headless.run_workers import worker_of

                worker = worker_of(instance, instance.get_run_by_id(run_id))
            assert worker.pid is not None and worker.host, worker
            os.kill(worker.pid, signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: graphql(port, RUN_STATUS % run_id)["data"]["runOrError"]["status"] == "FAILURE",
                     90, "the killed run marked failed", step=1)
            failed_in = time.monotonic() - killed
            second = launch_partition_run(port, "recycle_shards", ["reflected_instructions"], {"dataset": "h", "shard": "00"})
            status = wait_for(
                lambda: (s := graphql(port, RUN_STATUS % second)["data"]["runOrError"]["status"])
                in ("SUCCESS", "FAILURE", "CANCELED") and s,
                180, "the second run", step=1,
            )
            twice = rebought(server)
    print(f"\ndaemon run worker killed: failed {failed_in:.0f} s later; "
          f"{twice} replies bought twice")
    assert status == "SUCCESS"
    assert failed_in < 75  # "within about a minute"
    assert phase_one_outcomes(home) == Counter({"ok": RECORDS})
    assert twice <= IN_FLIGHT
