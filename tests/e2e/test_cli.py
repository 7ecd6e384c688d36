"""The `reflection` command as a user runs it: a subprocess against a temporary home."""

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.conftest import alpaca_rows, write_json

BIN = Path(sys.executable).parent


def reflection(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "reflection"), *args], capture_output=True, text=True, env=env, timeout=300
    )


def make_env(home: Path) -> dict:
    env = dict(os.environ, DAGSTER_HOME=str(home), REFLECTION_SHARDS="4")
    env.pop("REFLECTION_DUCKDB", None)
    return env


def test_register_list_and_run_one_shard(tmp_path):
    home = tmp_path / "home"  # created by the command, dagster.yaml included
    env = make_env(home)
    source = write_json(tmp_path / "d.json", alpaca_rows(30))
    added = reflection("datasets", "add", "demo", str(source), "--limit", "30", env=env)  # all 30 rows
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"dataset demo: {source}, its first 30 rows"
    assert (home / "dagster.yaml").exists()
    listed = reflection("datasets", "list", env=env)
    assert "demo" in listed.stdout and str(source) in listed.stdout and "limit=30" in listed.stdout
    run = reflection("run", "--dataset", "demo", "--select", "raw_dataset", "--shard", "01", env=env)
    assert run.returncode == 0, run.stderr
    assert "1 of 1 runs succeeded" in run.stdout and "raw_dataset:" in run.stdout
    with duckdb.connect(str(home / "reflection.duckdb")) as con:
        assert con.execute("SELECT DISTINCT shard FROM raw.records").fetchall() == [(1,)]
    status = reflection("status", env=env)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == "dataset demo"
    assert lines[1].split() == ["raw_dataset", "1/4", "materialized"]
    assert lines[2].split() == ["never", "materialized:", "00,", "02,", "03"]
    assert any(line.split()[:2] == ["reflected_instructions", "0/4"] for line in lines)
    assert any(line.split()[:2] == ["benchmark_scores", "0/1"] for line in lines)


def test_database_and_artifacts_paths_are_overridable(tmp_path):
    env = make_env(tmp_path / "home")
    env["REFLECTION_DUCKDB"] = str(tmp_path / "elsewhere" / "db.duckdb")
    source = write_json(tmp_path / "d.json", alpaca_rows(5))
    assert reflection("datasets", "add", "demo", str(source), env=env).returncode == 0
    assert reflection("run", "--select", "raw_dataset", "--shard", "00", env=env).returncode == 0
    assert (tmp_path / "elsewhere" / "db.duckdb").exists()
    assert not (tmp_path / "home" / "reflection.duckdb").exists()


def test_user_errors_are_one_clear_line(tmp_path):
    env = make_env(tmp_path / "home")
    missing = reflection("datasets", "add", "demo", str(tmp_path / "nope.json"), env=env)
    assert missing.returncode == 2 and "nope.json: no such file or folder" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_name = reflection("datasets", "add", "a|b", str(tmp_path), env=env)
    assert bad_name.returncode == 2 and "dataset name 'a|b'" in bad_name.stderr
    no_rows = reflection("datasets", "add", "demo", str(tmp_path), "--limit", "0", env=env)
    assert no_rows.returncode == 2 and "--limit 0: expected a number of rows from 1 up" in no_rows.stderr
    unknown = reflection("run", "--dataset", "ghost", env=env)
    assert unknown.returncode == 2 and "'ghost' is not registered" in unknown.stderr
    source = write_json(tmp_path / "d.json", alpaca_rows(5))
    assert reflection("datasets", "add", "demo", str(source), env=env).returncode == 0
    other = write_json(tmp_path / "e.json", alpaca_rows(6))
    clash = reflection("datasets", "add", "demo", str(other), env=env)
    assert clash.returncode == 2 and "--replace" in clash.stderr
    bad_select = reflection("run", "--select", "nope", env=env)
    assert bad_select.returncode == 2 and "unknown asset(s) nope" in bad_select.stderr
    bad_shard = reflection("run", "--shard", "99", env=env)
    assert bad_shard.returncode == 2 and "unknown shard(s) 99" in bad_shard.stderr


def test_a_failing_run_exits_non_zero_and_says_why(tmp_path):
    env = make_env(tmp_path / "home")
    source = tmp_path / "broken.jsonl"
    source.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    assert reflection("datasets", "add", "broken", str(source), env=env).returncode == 0
    run = reflection("run", "--dataset", "broken", "--select", "raw_dataset", "--shard", "00", env=env)
    assert run.returncode == 1
    assert "FAILED broken|00" in run.stdout and f"{source}: line 2" in run.stdout


def test_oracle_info_and_ask_against_an_endpoint(tmp_path):
    from tests.fakes.openai_server import FakeOpenAI

    env = make_env(tmp_path / "home")
    env.update(
        REFLECTION_ORACLE_BACKEND="openai",
        REFLECTION_ORACLE_MODEL="gpt-4o-mini",
        REFLECTION_ORACLE_API_KEY="sk-cli-secret-98765",
    )
    with FakeOpenAI() as server:
        env["REFLECTION_ORACLE_BASE_URL"] = server.base_url
        first = reflection("oracle", "ask", "Is this thing on?", env=env)
        assert first.returncode == 0, first.stderr
        assert "reply to: Is this thing on?" in first.stdout and "[sent;" in first.stderr
        second = reflection("oracle", "ask", "Is this thing on?", env=env)
        assert "[cached;" in second.stderr and server.request_count == 1
        info = reflection("oracle", "info", env=env)
    lines = {line.split()[0]: line.split()[1:] for line in info.stdout.splitlines() if line and not line.startswith(" ")}
    assert lines["model"] == ["gpt-4o-mini", "from", "REFLECTION_ORACLE_MODEL"]
    assert lines["api_key"] == ["set", "from", "REFLECTION_ORACLE_API_KEY"]
    assert lines["temperature"] == ["0.0"]  # a default says nothing about where it came from
    assert "1 replies" in info.stdout
    for output in (first.stdout, first.stderr, info.stdout, info.stderr):
        assert "sk-cli-secret-98765" not in output
    judge = reflection("oracle", "info", "--judge", env={**env, "REFLECTION_JUDGE_MODEL": "gpt-4o"})
    assert "gpt-4o                            from REFLECTION_JUDGE_MODEL" in judge.stdout
    assert "openai                            from REFLECTION_ORACLE_BACKEND" in judge.stdout  # inherited


def test_run_takes_asset_settings_from_a_file(tmp_path):
    env = make_env(tmp_path / "home")
    source = write_json(tmp_path / "d.json", alpaca_rows(5) + [{"instruction": "x", "output": ""}] * 3)
    assert reflection("datasets", "add", "demo", str(source), env=env).returncode == 0
    strict = tmp_path / "strict.yaml"
    strict.write_text("raw_dataset:\n  max_reject_share: 0.0\nrecycled_dataset:\n  mode: instruction\n")
    run = reflection("run", "--select", "raw_dataset", "--config", str(strict), env=env)
    assert run.returncode == 0 and "check failed (ERROR) raw_dataset:reject_share" in run.stdout
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("raw_dataset:\n  max_reject_share: lots\n")
    bad = reflection("run", "--select", "raw_dataset", "--config", str(wrong), env=env)
    assert bad.returncode == 2 and "invalid asset settings" in bad.stderr and "Traceback" not in bad.stderr
    ghost = tmp_path / "ghost.yaml"
    ghost.write_text("nope:\n  x: 1\n")
    unknown = reflection("run", "--select", "raw_dataset", "--config", str(ghost), env=env)
    assert unknown.returncode == 2 and "config for unknown asset(s) nope" in unknown.stderr


def test_testsets_and_scores_commands(tmp_path):
    env = make_env(tmp_path / "home")
    good = tmp_path / "wizard.jsonl"
    good.write_text('{"idx": 1, "Skill": "Math", "Instruction": "Add 2 and 3."}\n')
    added = reflection("testsets", "add", "wizard", str(good), env=env)
    assert added.returncode == 0, added.stderr
    assert "test set wizard: 1 prompts" in added.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"idx": 1, "Skill": "Math", "Instruction": "ok"}\n{"idx": 2, "Instruction": 7}\n')
    refused = reflection("testsets", "add", "bad", str(bad), env=env)
    assert refused.returncode == 2
    assert f"{bad}, line 2 (wizardlm): expected a non-empty string in 'Instruction'" in refused.stderr
    listed = reflection("testsets", "list", env=env)
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["bundled", "wizard"]
    scores = reflection("scores", env=env)
    assert scores.returncode == 0 and "no benchmark scores yet" in scores.stdout


def test_a_bad_setting_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    from reflection_assets import cli

    env = make_env(tmp_path / "home")
    env["REFLECTION_ORACLE_BACKEND"] = "anthropic"
    bad = reflection("oracle", "info", env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "reflection: oracle backend 'anthropic': expected one of local, openai"

    def broken(args):
        raise RuntimeError("a bug, not a user mistake")

    monkeypatch.setattr(cli, "cmd_scores", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["scores"])


def test_observe_prints_the_oracle_the_judge_and_the_student(tmp_path):
    env = make_env(tmp_path / "home")
    observed = reflection("observe", env=dict(env, REFLECTION_STUDENT_TEMPLATE="alpaca"))
    assert observed.returncode == 0, observed.stderr
    lines = {line.split()[0]: line for line in observed.stdout.splitlines()}
    assert set(lines) == {"oracle", "judge", "student"}
    assert "local SmolLM2-135M-Instruct" in lines["oracle"]
    assert "template alpaca" in lines["student"] and "fingerprint " in lines["student"]
