"""The deployment shape a team runs: the Dagster instance in a real PostgreSQL server
(DAGSTER_PG_URL), `dagster-daemon` and `dagster-webserver` as separate processes against it,
a backfill of every shard of a dataset launched through the webserver's GraphQL API. All
runs succeed side by side, their writes serialized on the store's lock (every row there, no
lock errors), and the automation sensor ticks.

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
from tests.e2e.dagster_dev import BIN, REPO, backfill_runs, free_port, graphql, launch_backfill, stop_group
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
        web = _start([str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                     env, tmp_path / "webserver.log")
        daemon = None
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if graphql(port, "{ assetNodes { id } }").get("data", {}).get("assetNodes"):
                        break
                except OSError:
                    pass
                assert web.poll() is None, (tmp_path / "webserver.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the webserver did not serve the asset graph in 180 s"
                time.sleep(1)
            shards = [f"d|{i:02d}" for i in range(4)]
            backfill_id = launch_backfill(port, shards, ["raw_dataset", "reflected_instructions"])
            # The daemon starts once the backfill is stored in the instance, as it finds one
            # left by a webserver while it was down. Dagster's backfill loop looks at its start,
            # then every 30 s (fixed): started first, it found nothing and the test waited about
            # 25 s for its second look.
            daemon = _start([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env,
                            tmp_path / "daemon.log")

            deadline = time.monotonic() + 420
            while True:
                runs = backfill_runs(port, backfill_id)
                done = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
                if len(runs) == len(shards) and len(done) == len(shards):
                    break
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"the backfill did not finish in 420 s: {runs}"
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
            if daemon is not None:
                stop_group(daemon)

    assert sorted(r["status"] for r in runs) == ["SUCCESS"] * len(shards), runs
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
        assert len(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))) == len(shards)
        # No pool around the store: the runs' steps were free to overlap (the daemon runs three
        # at a time); how many did depends on how fast each started.
        windows = sorted(
            (stat.start_time, stat.end_time)
            for run in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            for stat in instance.get_run_step_stats(run.run_id)
        )
        overlapping = sum(next_start < end for (_, end), (next_start, _) in zip(windows, windows[1:]))
        print(f"\n{overlapping} of {len(windows) - 1} consecutive steps overlapped in time")
        assert "duckdb" not in instance.event_log_storage.get_concurrency_keys()
        instance.dispose()
    finally:
        del os.environ["DAGSTER_PG_URL"]
    assert not (home / "storage" / "runs.db").exists()
