"""The store is held for reads and writes, not for the work between them (engines/store/storage.py):
runs of several shards, of several datasets, and the readers work side by side.

- Four `reflection run` processes, one shard each of one dataset, against a scripted oracle
  at 3 s a request with 16 in flight each, take at most twice the time of one shard alone;
  every row is there and no reply is bought twice. While they run, `reflection status` and
  `reflection lineage` wait less than 2 s for the store (lineage answers within 2 s in all;
  status spends 2-3 s of this 2-core machine in Dagster's own instance queries even when
  nothing runs, so its own time is printed, and what it waited for the store asserted).
- Dataset B's raw_dataset and reflected_instructions complete while dataset A's
  baseline_adapter trains (it holds the `gpu` pool's slot the whole time)."""

import contextlib
import io
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import dagster as dg
import duckdb
import pytest
import yaml

from reflection_assets.engines.store.storage import store_wait_s
from reflection_assets.method.records import shard_of, to_record
from tests.conftest import REPO, alpaca_rows, write_json
from tests.fakes import reflection_oracle
from tests.fakes.openai_server import FakeOpenAI

BIN = os.path.dirname(sys.executable)
SHARDS = 4
PER_SHARD = 96
IN_FLIGHT = 16
LATENCY_S = 3.0


def rows_in_shards(rows: list[dict], shards: range, per_shard: int) -> list[dict]:
    """`per_shard` of `rows` in each of `shards`, so every shard has the same work."""
    picked: dict[int, list[dict]] = {s: [] for s in shards}
    for row in rows:
        shard = shard_of(to_record(row, {}, 100_000).record_id, SHARDS)
        if shard in picked and len(picked[shard]) < per_shard:
            picked[shard].append(row)
    assert all(len(p) == per_shard for p in picked.values()), {s: len(p) for s, p in picked.items()}
    return [row for s in shards for row in picked[s]]


def environment(tmp_path, server: FakeOpenAI) -> dict:
    env = dict(
        os.environ,
        DAGSTER_HOME=str(tmp_path / "home"),
        REFLECTION_SHARDS=str(SHARDS),
        REFLECTION_ORACLE_BACKEND="openai",
        REFLECTION_ORACLE_MODEL="gpt-4o-mini",
        REFLECTION_ORACLE_BASE_URL=server.base_url,
        REFLECTION_ORACLE_API_KEY="sk-test-concurrency-0123",
        REFLECTION_ORACLE_MAX_CONCURRENCY=str(IN_FLIGHT),
    )
    for name in ("REFLECTION_DUCKDB", "REFLECTION_ARTIFACTS"):
        env.pop(name, None)
    return env


def reflection(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([os.path.join(BIN, "reflection"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def start(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([os.path.join(BIN, "reflection"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


# It times processes side by side: nothing else may share the machine (make test runs it alone).
@pytest.mark.serial
def test_four_shards_in_four_processes_run_side_by_side_and_readers_answer(tmp_path, monkeypatch):
    pool = alpaca_rows(3000)
    solo = rows_in_shards(pool[:1500], range(0, 1), PER_SHARD)
    four = rows_in_shards(pool[1500:], range(SHARDS), PER_SHARD)
    with FakeOpenAI(latency_s=LATENCY_S, responder=reflection_oracle.respond, plan=reflection_oracle.plan) as server:
        env = environment(tmp_path, server)
        for name, rows in (("solo", solo), ("four", four)):
            reflection("datasets", "add", name, str(write_json(tmp_path / f"{name}.json", rows)), env=env)
        reflection("run", "--select", "raw_dataset", env=env)  # both datasets, one process

        started = time.monotonic()
        reflection("run", "--dataset", "solo", "--shard", "00", "--select", "reflected_instructions", env=env)
        alone_s = time.monotonic() - started

        database = tmp_path / "home" / "reflection.duckdb"
        with duckdb.connect(str(database), read_only=True) as con:
            record = con.execute("SELECT record_id FROM raw.records WHERE dataset = 'four' LIMIT 1").fetchone()[0]
        started = time.monotonic()
        runs = [start("run", "--dataset", "four", "--shard", f"{s:02d}", "--select", "reflected_instructions", env=env)
                for s in range(SHARDS)]
        # The readers, in this process, while the four write: the store's wait, not Python's start.
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        from reflection_assets.cli import main

        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["status"]) == 0  # imports and loads the definitions once, before timing
        answered: list[tuple[str, float, float]] = []
        while server.answered < PER_SHARD + IN_FLIGHT and time.monotonic() - started < 300:
            time.sleep(0.2)
        for _ in range(2):
            for command in (["status"], ["lineage", record]):
                asked, waited = time.monotonic(), store_wait_s()
                with contextlib.redirect_stdout(io.StringIO()):
                    assert main(command) == 0
                answered.append((command[0], time.monotonic() - asked, store_wait_s() - waited))
        writing = all(run.poll() is None for run in runs)
        outputs = [finish(run) for run in runs]
        four_s = time.monotonic() - started
    print(f"\none shard alone {alone_s:.1f} s; four shards in four processes {four_s:.1f} s "
          f"({four_s / alone_s:.2f}x); readers (answered in, of it waiting for the store): "
          + ", ".join(f"{c} {s:.2f} s ({w:.2f} s)" for c, s, w in answered))
    assert all("1 of 1 runs succeeded" in out for out in outputs), outputs
    assert writing  # the readers asked while the runs were still at work
    assert all(waited < 2.0 for _, _, waited in answered), answered
    assert all(seconds < 2.0 for command, seconds, _ in answered if command == "lineage"), answered
    assert four_s <= 2 * alone_s, (four_s, alone_s)
    assert sum(count - 1 for count in server.by_body.values()) == 0  # no reply bought twice
    with duckdb.connect(str(database), read_only=True) as con:
        outcomes = Counter(dict(con.execute(
            "SELECT dataset, count(*) FROM reflect.instructions WHERE outcome = 'ok' GROUP BY 1").fetchall()))
    assert outcomes == Counter({"solo": PER_SHARD, "four": PER_SHARD * SHARDS})


# Times nothing (A trains far longer than B takes): it runs beside the other tests.
def test_a_dataset_reflects_while_another_trains(tmp_path, shared_artifacts, tiny_student):
    rows = alpaca_rows(200)
    config = tmp_path / "train.yaml"
    # Far more steps than the test waits for: B must be done while A is still training.
    config.write_text(yaml.safe_dump({"baseline_adapter": {"max_steps": 100_000, "batch_size": 2,
                                                           "base_model": str(tiny_student)}}))
    with FakeOpenAI(latency_s=0.5, responder=reflection_oracle.respond, plan=reflection_oracle.plan) as server:
        env = dict(environment(tmp_path, server), REFLECTION_ARTIFACTS=str(shared_artifacts),
                   REFLECTION_STUDENT_MODEL=str(tiny_student))
        for name, part in (("a", rows[:64]), ("b", rows[64:])):
            reflection("datasets", "add", name, str(write_json(tmp_path / f"{name}.json", part)), env=env)
        reflection("run", "--dataset", "a", "--select", "raw_dataset", env=env)

        training = start("run", "--dataset", "a", "--select", "baseline_adapter", "--config", str(config), env=env)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(training.stdout), daemon=True)
        reader.start()
        home = str(tmp_path / "home")
        try:
            with dg.DagsterInstance.from_config(home) as instance:
                def holders() -> set[str]:
                    return {s.step_key for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots}

                deadline = time.monotonic() + 180
                while "baseline_adapter" not in holders():
                    assert training.poll() is None, "".join(lines)
                    assert time.monotonic() < deadline, "A's training never started: " + "".join(lines)
                    time.sleep(0.5)
                started = time.monotonic()
                b = reflection("run", "--dataset", "b", "--select", "raw_dataset,reflected_instructions",
                               env=env)
                b_s = time.monotonic() - started
                still_training = training.poll() is None and "baseline_adapter" in holders()
        finally:
            training.kill()
            training.wait()
            reader.join(timeout=10)
    print(f"\nB's raw_dataset and reflected_instructions: {b_s:.1f} s, while A trained")
    assert "FAILED" not in b.stdout and "waiting for a slot" not in b.stdout + b.stderr
    assert still_training, "".join(lines)
    with duckdb.connect(str(tmp_path / "home" / "reflection.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM reflect.instructions WHERE dataset = 'b'").fetchone()[0] == len(rows) - 64
