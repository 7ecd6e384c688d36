"""The deployment shape a team runs: the Dagster instance in a real PostgreSQL server
(DAGSTER_PG_URL), `dagster-daemon` and `dagster-webserver` as separate processes against it,
a backfill of every shard of a dataset launched through the webserver's GraphQL API. All
runs succeed, the `duckdb` pool keeps DuckDB to one writer (every row there, no lock
errors), and the automation sensor ticks.

PostgreSQL is Debian's package (`make test` installs it when missing), started in a
temporary folder on a free port on 127.0.0.1 and stopped afterwards."""

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from tests.conftest import alpaca_rows, write_json
from tests.e2e.dagster_dev import BIN, REPO, free_port, graphql, stop_group
from tests.fakes import reflection_oracle
from tests.fakes.openai_server import FakeOpenAI

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
RECORDS = 48


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: there, run it as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres():
    if not PG_BIN:
        pytest.skip("no PostgreSQL server: `make test` installs Debian's postgresql package")
    binaries = Path(PG_BIN[-1])
    folder = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    subprocess.run(_as_postgres([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True, timeout=120)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(_as_postgres([str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"),
                                 "-w", "start"]), check=True, capture_output=True, timeout=120)
    try:
        subprocess.run(_as_postgres([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                     "dagster"]), check=True, capture_output=True, timeout=60)
        yield f"postgresql://postgres@127.0.0.1:{port}/dagster"
    finally:
        subprocess.run(_as_postgres([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def _start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}
"""
RUNS = "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"
SENSOR_TICKS = (
    "{ repositoriesOrError { ... on RepositoryConnection { nodes { sensors { name "
    "sensorState { status ticks(limit: 10) { status error { message } } } } } } } }"
)


def test_a_backfill_through_the_webserver_with_the_instance_in_postgresql(postgres, tmp_path):
    home = tmp_path / "home"
    with FakeOpenAI(latency_s=0.05, responder=reflection_oracle.respond, plan=reflection_oracle.plan) as oracle:
        env = dict(
            os.environ,
            DAGSTER_HOME=str(home),
            DAGSTER_PG_URL=postgres,
            REFLECTION_SHARDS="4",
            REFLECTION_ORACLE_BACKEND="openai",
            REFLECTION_ORACLE_MODEL="gpt-4o-mini",
            REFLECTION_ORACLE_BASE_URL=oracle.base_url,
            REFLECTION_ORACLE_API_KEY="sk-test-deploy-0123456789",
        )
        for name in ("REFLECTION_DUCKDB", "REFLECTION_ARTIFACTS"):
            env.pop(name, None)
        source = write_json(tmp_path / "d.json", alpaca_rows(RECORDS))
        added = subprocess.run([str(BIN / "reflection"), "datasets", "add", "d", str(source)], env=env,
                               capture_output=True, text=True, timeout=120)
        assert added.returncode == 0, added.stderr
        config = (home / "dagster.yaml").read_text()
        assert "env: DAGSTER_PG_URL" in config and "postgres@" not in config  # the URL stays in the environment

        port = free_port()
        daemon = _start([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, tmp_path / "daemon.log")
        web = _start([str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                     env, tmp_path / "webserver.log")
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if graphql(port, "{ assetNodes { id } }").get("data", {}).get("assetNodes"):
                        break
                except OSError:
                    pass
                assert web.poll() is None and daemon.poll() is None, (tmp_path / "webserver.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the webserver did not serve the asset graph in 180 s"
                time.sleep(1)
            shards = [f"d|{i:02d}" for i in range(4)]
            launched = graphql(port, BACKFILL, {"params": {
                "partitionNames": shards,
                "assetSelection": [{"path": ["raw_dataset"]}, {"path": ["reflected_instructions"]}],
                "fromFailure": False,
            }})["data"]["launchPartitionBackfill"]
            assert launched["__typename"] == "LaunchBackfillSuccess", launched

            deadline = time.monotonic() + 420
            while True:
                runs = graphql(port, RUNS)["data"]["runsOrError"]["results"]
                backfill_runs = [r for r in runs if {"key": "dagster/backfill", "value": launched["backfillId"]} in r["tags"]]
                done = [r for r in backfill_runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
                if len(backfill_runs) == len(shards) and len(done) == len(shards):
                    break
                assert time.monotonic() < deadline, f"the backfill did not finish in 420 s: {backfill_runs}"
                time.sleep(3)
            ticks = []
            deadline = time.monotonic() + 120
            while not ticks:
                [repo] = graphql(port, SENSOR_TICKS)["data"]["repositoriesOrError"]["nodes"]
                [sensor] = [s for s in repo["sensors"] if s["name"] == "recycle_stale"]
                ticks = sensor["sensorState"]["ticks"]
                assert time.monotonic() < deadline, "the automation sensor did not tick in 120 s"
                time.sleep(3)
        finally:
            stop_group(web)
            stop_group(daemon)

    assert sorted(r["status"] for r in backfill_runs) == ["SUCCESS"] * len(shards), backfill_runs
    assert not [t for t in ticks if t["status"] == "FAILURE"], ticks
    with duckdb.connect(str(home / "reflection.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw.records").fetchone()[0] == RECORDS
        assert con.execute("SELECT count(DISTINCT shard) FROM raw.records").fetchone()[0] == len(shards)
        assert con.execute("SELECT count(*) FROM reflect.instructions WHERE outcome = 'ok'").fetchone()[0] == RECORDS
    logs = (tmp_path / "daemon.log").read_text() + (tmp_path / "webserver.log").read_text()
    assert "Could not set lock" not in logs and "Conflicting lock" not in logs
    # The instance really is the PostgreSQL one: the runs are there, not in SQLite under home.
    os.environ["DAGSTER_PG_URL"] = postgres
    try:
        instance = dg.DagsterInstance.from_config(str(home))
        assert "Postgres" in type(instance.run_storage).__name__
        assert len(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": launched["backfillId"]}))) == len(shards)
        # One writer at a time: the steps of the runs never overlapped in time.
        windows = sorted(
            (stat.start_time, stat.end_time)
            for run in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": launched["backfillId"]}))
            for stat in instance.get_run_step_stats(run.run_id)
        )
        assert all(end <= next_start + 0.5 for (_, end), (next_start, _) in zip(windows, windows[1:])), windows
        instance.dispose()
    finally:
        del os.environ["DAGSTER_PG_URL"]
    assert not (home / "storage" / "runs.db").exists()
