"""A new user's first try: a 40-record slice of real records through every stage on the
default 16 shards, so that some shards are empty. Every run succeeds; the empty shards are
materialized with nothing in them, and the commands say empty, not missing. The oracle and
the judge are scripted OpenAI-compatible servers; the student (scoring, training, answering)
is a two-layer Llama-shaped model with the embedded model's tokenizer."""

import json
import os
import subprocess
import sys
from collections import Counter

import duckdb
import yaml

from reflection_assets.method.records import shard_of, to_record
from tests.conftest import REPO, write_json
from tests.fakes import reflection_oracle
from tests.fakes.openai_server import FakeOpenAI

BIN = os.path.dirname(sys.executable)
SHARDS = 16
# Rows 67..106 of the bundled sample: real Alpaca-style records, two of the 16 shards empty.
SLICE = slice(67, 107)
ADAPTERS = ("baseline_adapter", "recycled_adapter", "selective_adapter")
BENCHMARK = {"max_prompts": 3, "max_new_tokens": 12}


def respond(body: dict) -> str:
    """The judge's prompts carry [Question]; everything else is a reflection request."""
    user = body["messages"][-1]["content"]
    if "[Question]" in user:
        return "7 6\nThe first answer is a little more complete."
    return reflection_oracle.respond(body)


def plan(body: dict, nth: int) -> object:
    if "[Question]" in body["messages"][-1]["content"]:
        return "ok"
    return reflection_oracle.plan(body, nth)


def reflection(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "reflection"), *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=REPO)


def test_forty_records_through_every_stage_with_empty_shards(tmp_path, shared_artifacts, tiny_student):
    rows = json.loads((REPO / "reflection_assets/data/sample_alpaca.json").read_text())[SLICE]
    held = Counter(shard_of(to_record(r, {}, 100_000).record_id, SHARDS) for r in rows)
    empty = [s for s in range(SHARDS) if s not in held]
    assert len(rows) == 40 and empty, "the slice must leave shards empty"
    source = write_json(tmp_path / "h.json", rows)
    config = tmp_path / "small.yaml"
    adapter = {"max_steps": 2, "batch_size": 4, "base_model": str(tiny_student)}
    config.write_text(yaml.safe_dump({**{name: adapter for name in ADAPTERS}, "benchmark_scores": BENCHMARK}))
    with FakeOpenAI(responder=respond, plan=plan) as server:
        env = dict(os.environ, DAGSTER_HOME=str(tmp_path / "home"), REFLECTION_SHARDS=str(SHARDS),
                   REFLECTION_ARTIFACTS=str(shared_artifacts), REFLECTION_STUDENT_MODEL=str(tiny_student))
        for role in ("ORACLE", "JUDGE"):
            env.update({f"REFLECTION_{role}_BACKEND": "openai", f"REFLECTION_{role}_MODEL": f"{role.lower()}-x",
                        f"REFLECTION_{role}_BASE_URL": server.base_url, f"REFLECTION_{role}_API_KEY": "sk-test"})
        env.pop("REFLECTION_DUCKDB", None)
        assert reflection("datasets", "add", "h", str(source), env=env).returncode == 0
        run = reflection("run", "--dataset", "h", "--config", str(config), env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "FAILED" not in run.stdout
        assert "h recycled: 40 pairs" in run.stdout
        assert "recycled_vs_baseline" in run.stdout

        database = tmp_path / "home" / "reflection.duckdb"
        with duckdb.connect(str(database), read_only=True) as con:
            for stage in ("reflected_instructions", "reflected_responses", "recycled_dataset", "student_scores",
                          "selective_dataset"):
                written = dict(con.execute(
                    "SELECT shard, rows FROM registry.stage_shards WHERE stage = ? AND dataset = 'h'", [stage]
                ).fetchall())
                assert sorted(written) == list(range(SHARDS)), stage  # every shard, the empty ones included
                assert all(written[s] == 0 for s in empty), stage
            recycled = con.execute("SELECT count(*) FROM reflect.recycled WHERE dataset = 'h'").fetchone()[0]
            none_kept = con.execute(
                "SELECT count(*) FROM registry.stage_shards WHERE stage = 'selective_dataset' AND rows = 0"
            ).fetchone()[0]
        assert recycled == 40

        # Re-running a stage on one empty shard alone: done, with nothing to do.
        again = reflection("run", "--dataset", "h", "--select", "student_scores,selective_dataset",
                           "--shard", f"{empty[0]:02d}", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "1 of 1 runs succeeded" in again.stdout

        # Export says what is there, empty shards and all, without calling them missing.
        out = tmp_path / "selective.jsonl"
        export = reflection("export", "h", "--stage", "selective", "--format", "jsonl", "--out", str(out), env=env)
        assert export.returncode == 0, export.stderr
        assert out.exists() and "have no selective rows yet" not in export.stderr
        assert f"{none_kept} shard(s) materialized with no selective row" in export.stdout
        assert none_kept >= len(empty)

        # The pairs the student kept with the original instruction and the oracle's answer.
        with duckdb.connect(str(database), read_only=True) as con:
            kept_as_response = con.execute(
                "SELECT count(*) FROM selection.selective WHERE dataset = 'h' AND kind = 'response'"
            ).fetchone()[0]
        pairs = tmp_path / "selective_dpo.jsonl"
        dpo = reflection("export", "h", "--stage", "selective", "--format", "dpo", "--out", str(pairs), env=env)
        assert dpo.returncode == 0, dpo.stderr
        assert f"wrote {kept_as_response} preference pairs" in dpo.stdout
        lines = [json.loads(line) for line in pairs.read_text().splitlines()]
        assert len(lines) == kept_as_response and all(p["chosen"] != p["rejected"] for p in lines)
        assert json.loads((tmp_path / "dataset_info.json").read_text())["h_selective_dpo"]["ranking"] is True

    # A shard whose input was never materialized is told apart from an empty one: a second
    # dataset, the same records, raw_dataset alone, then the selection asked for.
    assert reflection("datasets", "add", "g", str(source), env=env).returncode == 0
    shard = f"{empty[0]:02d}"
    assert reflection("run", "--dataset", "g", "--select", "raw_dataset", "--shard", shard, env=env).returncode == 0
    early = reflection("run", "--dataset", "g", "--select", "selective_dataset", "--shard", shard, env=env)
    assert early.returncode == 1
    assert f"g|{shard}: student_scores has not been materialized for this shard: materialize it first" in early.stdout
