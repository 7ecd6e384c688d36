"""Batch mode end to end through `reflection run`: a materializing process killed with
SIGKILL while it polls re-attaches, on the next run, to the batch it left in flight. Every
record ends answered, no request is submitted again while its batch lives, and the scripted
Batch API never answers a request twice. Then the offline round trip: `reflection batch
export`, a `vllm run-batch`-layout output, `reflection batch import`, and a materialization
that sends nothing."""

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from tests.conftest import alpaca_rows
from tests.e2e.dagster_dev import BIN
from tests.e2e.test_crash_recovery import make_env as crash_env
from tests.e2e.test_crash_recovery import phase_one_outcomes, reflection, wait_for
from tests.fakes import reflection_oracle
from tests.fakes.batch_server import FakeBatchAPI

RECORDS = 40


def make_env(home: Path, server: FakeBatchAPI, **extra: str) -> dict:
    env = crash_env(home, server)  # one shard, the oracle at the scripted endpoint
    env.update({"REFLECTION_ORACLE_MODE": "batch", "REFLECTION_ORACLE_BATCH_POLL_S": "0.2", **extra})
    return env


def register(raw_home, env: dict) -> None:
    """Dataset `b` registered and its raw_dataset materialized in env's home (a copy)."""
    raw_home(Path(env["DAGSTER_HOME"]), "b", alpaca_rows(RECORDS), int(env["REFLECTION_SHARDS"]))


# A Dagster run materializing one stage for one shard, as the UI or the automation launches
# it: the stage's own step waits on the Batch API (no `reflection run` sending ahead).
STEP = """
import sys
import dagster as dg
from reflection_assets.dagster_instance import ensure_instance
from reflection_assets.definitions import JOB_FOR_PARTITIONS, RECORD_PARTITIONS, defs
from reflection_assets.headless.runner import run_record_partitions
[outcome] = run_record_partitions(ensure_instance(), defs, JOB_FOR_PARTITIONS[RECORD_PARTITIONS],
                                  [dg.AssetKey("reflected_instructions")], "b", ["00"], "INFO")
print(outcome.error or "ok")
sys.exit(0 if outcome.success else 1)
"""
COMMANDS = {
    "reflection run": [str(BIN / "reflection"), "run", "--dataset", "b", "--select", "reflected_instructions"],
    "a run's step": [str(BIN / "python"), "-c", STEP],
}


@pytest.mark.parametrize("waiter", list(COMMANDS))
def test_a_run_killed_mid_poll_re_attaches_to_its_batches(tmp_path, raw_home, waiter):
    home = tmp_path / "home"

    def line_plan(custom_id, body, attempt):  # a few 5xx lines, fine when retried
        return ("status", 503, "overloaded") if attempt == 1 and custom_id < "3" else "ok"

    with FakeBatchAPI(responder=reflection_oracle.respond, line_plan=line_plan) as server:
        env = make_env(home, server)
        register(raw_home, env)
        server.hold = True  # the batch stays in_progress: the run polls
        child = subprocess.Popen(COMMANDS[waiter], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: server.created and server.retrieves >= 3, 120, "the run polling its batch")
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        submitted = list(server.created)
        assert len(submitted) == 1 and server.batches[submitted[0]]["status"] == "in_progress"

        listed = reflection("batch", "list", env=env)
        assert listed.returncode == 0 and "in_progress" in listed.stdout and submitted[0] in listed.stdout
        assert ("b|00" if waiter == "a run's step" else "b ") in listed.stdout and "reflected_instructions" in listed.stdout
        status = reflection("status", env=env)
        assert "1 batch(es) in flight, 40 requests not answered yet" in status.stdout

        server.hold = False
        if waiter == "a run's step":
            assert "recovered run" in reflection("recover", env=env).stderr  # its pool slot back
        rerun = subprocess.run(COMMANDS[waiter], env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "re-attached to 1 batch(es) in flight holding 40 of these requests; submitting 0" in rerun.stderr
        retried = [b for b in server.created if b not in submitted]

    assert phase_one_outcomes(home) == Counter({"ok": RECORDS})  # every record answered
    assert server.chat == []  # nothing went online
    assert max(server.answered.values()) == 1  # no request answered twice
    # Re-attached, not resubmitted: the first batch holds every request; later batches
    # hold only the lines that failed in it.
    failed_first = {k for k in server.placed if k < "3"}
    assert server.batches[submitted[0]]["request_counts"]["total"] == RECORDS
    assert {k for k, n in server.placed.items() if n > 1} == failed_first
    assert sum(server.batches[b]["request_counts"]["total"] for b in retried) == len(failed_first) > 0
    with duckdb.connect(str(home / "reflection.duckdb"), read_only=True) as con:
        states = con.execute("SELECT status, collected FROM oracle.batches ORDER BY created_at").fetchall()
    assert states == [("completed", True)] * (1 + len(retried))


def test_offline_files_round_trip_through_vllm_run_batch_layout(tmp_path, raw_home):
    home = tmp_path / "home"
    with FakeBatchAPI(responder=reflection_oracle.respond) as server:
        # No endpoint in the offline flow: nothing to probe, online mode.
        env = make_env(home, server, REFLECTION_ORACLE_MODE="online", REFLECTION_ORACLE_PROBE="off")
        register(raw_home, env)
        out = tmp_path / "requests.jsonl"
        exported = reflection("batch", "export", "--dataset", "b", "--stage", "reflected_instructions", "--out", str(out), env=env)
        assert exported.returncode == 0, exported.stderr
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(lines) == RECORDS and {line["url"] for line in lines} == {"/v1/chat/completions"}
        assert all(line["method"] == "POST" and len(line["custom_id"]) == 64 for line in lines)

        # What `vllm run-batch -i requests.jsonl -o replies.jsonl` writes: one file, `error` per line.
        replies = tmp_path / "replies.jsonl"
        outputs = []
        for line in lines[:-1]:
            body = {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reflection_oracle.respond(line["body"])},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50}}
            outputs.append({"id": f"vllm-{line['custom_id'][:8]}", "custom_id": line["custom_id"],
                            "response": {"status_code": 200, "request_id": "r", "body": body}, "error": None})
        outputs.append({"id": "vllm-x", "custom_id": lines[-1]["custom_id"], "response": None,
                        "error": "CUDA out of memory"})
        outputs.append({"id": "vllm-y", "custom_id": "f" * 64, "response": {"status_code": 200, "body": outputs[0]["response"]["body"]},
                        "error": None})
        replies.write_text("".join(json.dumps(o) + "\n" for o in outputs))

        broken = tmp_path / "broken.jsonl"
        broken.write_text(json.dumps(outputs[0]) + "\n{not json\n")
        refused = reflection("batch", "import", str(broken), env=env)
        assert refused.returncode == 2 and f"{broken}: line 2, column 2: not valid JSON" in refused.stderr

        imported = reflection("batch", "import", str(replies), env=env)
        assert imported.returncode == 1  # one line of no request of ours
        assert f"{RECORDS - 1} replies stored" in imported.stdout and "1 failed lines recorded" in imported.stdout
        assert "1 line(s) with a custom_id no exported request has, not stored: " + "f" * 64 in imported.stderr

        again = reflection("batch", "export", "--dataset", "b", "--stage", "reflected_instructions", "--out", str(out), env=env)
        assert again.returncode == 0 and len(out.read_text().splitlines()) == 1  # only the one that failed
        last = json.loads(out.read_text())
        fixed = dict(outputs[0], custom_id=last["custom_id"])
        fixed["response"] = dict(fixed["response"], body=dict(fixed["response"]["body"], choices=[
            {"index": 0, "message": {"role": "assistant", "content": reflection_oracle.respond(last["body"])}, "finish_reason": "stop"}]))
        (tmp_path / "last.jsonl").write_text(json.dumps(fixed) + "\n")
        assert reflection("batch", "import", str(tmp_path / "last.jsonl"), env=env).returncode == 0

        run = reflection("run", "--dataset", "b", "--select", "reflected_instructions", env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        assert server.chat == [] and server.created == []  # materializing sent nothing
        nothing = reflection("batch", "export", "--dataset", "b", "--stage", "reflected_instructions", "--out", str(out), env=env)
        assert "nothing to export" in nothing.stdout
        listed = reflection("batch", "list", env=env)
        assert listed.stdout.count(" imported ") == 2 and " exported " not in listed.stdout
    assert phase_one_outcomes(home) == Counter({"ok": RECORDS})


@pytest.mark.parametrize("waiter", list(COMMANDS))
def test_cancel_stops_a_datasets_live_batches_and_keeps_what_they_answered(tmp_path, raw_home, waiter):
    home = tmp_path / "home"
    with FakeBatchAPI(responder=reflection_oracle.respond) as server:
        env = make_env(home, server)
        register(raw_home, env)
        server.hold = True
        child = subprocess.Popen(COMMANDS[waiter], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: server.created and server.retrieves >= 2, 120, "the run polling its batch")
        cancelled = reflection("batch", "cancel", "--dataset", "b", env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"cancelled {server.created[0]}" in cancelled.stdout and server.cancels == server.created
        output, _ = child.communicate(timeout=120)
        assert reflection("batch", "cancel", "--dataset", "b", env=env).stdout.startswith("no live batches of b")
    assert len(server.created) == 1  # a batch we cancelled is not submitted again
    with duckdb.connect(str(home / "reflection.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM oracle.replies").fetchone() == (RECORDS // 2,)  # what it answered
    if waiter == "reflection run":  # stops: cancelling a dataset's batches means stop spending on it
        assert child.returncode == 1 and "batches of reflected_instructions were cancelled" in output
        return
    # A run's step finishes the stage: the answered half rewritten, the rest kept as it was.
    assert child.returncode == 0, output
    assert phase_one_outcomes(home) == Counter({"ok": RECORDS // 2, "oracle_error": RECORDS // 2})
    with duckdb.connect(str(home / "reflection.duckdb"), read_only=True) as con:
        reasons = con.execute("SELECT DISTINCT reason FROM reflect.instructions WHERE outcome = 'oracle_error'").fetchall()
    assert [r[0] for r in reasons] == [f"kept the original pair: cancelled by `reflection batch cancel` (batch {server.created[0]})"]


def test_reflection_run_sends_a_whole_dataset_ahead_in_one_batch_per_wave(tmp_path, raw_home):
    """Four shards, two stages: one batch per stage for the whole dataset (not one per shard
    and stage, each waited for in turn), and the materializations find every reply cached.
    Each batch is made inside a Dagster run of the `send_ahead` job, with the run's
    resources: no oracle call of `reflection run` is made outside a Dagster run."""
    home = tmp_path / "home"
    with FakeBatchAPI(responder=reflection_oracle.respond) as server:
        env = make_env(home, server, REFLECTION_SHARDS="4")
        register(raw_home, env)
        run = reflection("run", "--dataset", "b", "--select", "reflected_instructions,reflected_responses,recycled_dataset", env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "batch mode: sending ahead what reflected_instructions needs for 4 shard(s) of b" in run.stderr
        assert "8 of 8 runs succeeded" in run.stdout  # two levels (phase 1; phase 2 and the set) of four shards
        assert [server.batches[b]["request_counts"]["total"] for b in server.created] == [RECORDS, 2 * RECORDS]
        listed = reflection("batch", "list", "--dataset", "b", env=env)
        assert listed.stdout.count("completed") == 2
        created_at = list(server.created_at)
    assert server.chat == [] and max(server.answered.values()) == 1
    with dg.DagsterInstance.from_config(str(home)) as instance:
        ahead = instance.get_run_records(filters=dg.RunsFilter(job_name="send_ahead"))
        assert len(ahead) == 2 and all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in ahead)
        windows = [(r.start_time, r.end_time) for r in ahead]
        stages = sorted(r.dagster_run.run_config["ops"]["send_stage_ahead"]["config"]["stage"] for r in ahead)
    assert stages == ["reflected_instructions", "reflected_responses"]
    for made in created_at:  # every batch, inside one of those runs
        assert any(start <= made <= end for start, end in windows), (made, windows)
    assert phase_one_outcomes(home) == Counter({"ok": RECORDS})
    with duckdb.connect(str(home / "reflection.duckdb"), read_only=True) as con:
        assert con.execute("SELECT variant, outcome, count(*) FROM reflect.responses GROUP BY ALL ORDER BY 1").fetchall() == [
            ("chain", "ok", RECORDS), ("original", "ok", RECORDS)]
        assert con.execute("SELECT count(*) FROM reflect.recycled WHERE provenance = 'both'").fetchone() == (RECORDS,)
