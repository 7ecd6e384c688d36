"""A damaged or lost store loses nothing paid: 100 records are reflected against the scripted
oracle through the `reflection` command; the store is then damaged (the middle half of its
bytes overwritten) or deleted; `reflection doctor` says so and names `reflection rebuild`;
every other command says the same without a traceback; the rebuild restores the
registries, the replies and a batch record from the ledger, and materializing the stages
again sends no request and exports every record."""

import json
import random
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest

from tests.conftest import alpaca_rows, write_json
from tests.e2e.test_crash_recovery import make_env, reflection
from tests.fakes import reflection_oracle
from tests.fakes.openai_server import FakeOpenAI

RECORDS = 100
STAGES = ("run", "--dataset", "h", "--select", "recycled_dataset", "--upstream")


def damage_middle_half(path: Path) -> None:
    size = path.stat().st_size
    noise = random.Random(0)
    with open(path, "r+b") as handle:
        handle.seek(size // 4)
        handle.write(bytes(noise.getrandbits(8) for _ in range(size // 2)))


def no_traceback(result: subprocess.CompletedProcess) -> str:
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def server():
    with FakeOpenAI(responder=reflection_oracle.respond, plan=reflection_oracle.plan) as fake:
        yield fake


@pytest.fixture(scope="module")
def reflected(tmp_path_factory, server) -> Path:
    """100 records reflected once, through the command: the DAGSTER_HOME (store, ledger,
    instance) each test here copies and then damages, deletes or extends."""
    folder = tmp_path_factory.mktemp("reflected")
    home = folder / "home"
    env = make_env(home, server)
    source = write_json(folder / "h.json", alpaca_rows(RECORDS))
    assert reflection("datasets", "add", "h", str(source), env=env).returncode == 0
    before = server.request_count
    first = reflection(*STAGES, env=env)
    assert first.returncode == 0, first.stderr
    assert server.request_count - before >= 2 * RECORDS  # both phases paid
    with duckdb.connect(str(home / "reflection.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM reflect.recycled").fetchone()[0] == RECORDS
    return home


def reflected_home(tmp_path: Path, reflected: Path, server: FakeOpenAI) -> tuple[Path, dict]:
    home = tmp_path / "home"
    shutil.copytree(reflected, home)
    return home, make_env(home, server)


def materialize_again(server: FakeOpenAI, env: dict, tmp_path: Path) -> None:
    before = server.request_count
    again = reflection(*STAGES, env=env)
    assert again.returncode == 0, again.stderr
    assert server.request_count == before  # every reply came from the restored cache
    out = tmp_path / "recycled.jsonl"
    export = reflection("export", "h", "--format", "jsonl", "--out", str(out), env=env)
    assert export.returncode == 0, export.stderr
    assert len(out.read_text().splitlines()) == RECORDS


@pytest.mark.parametrize("loss", ["damaged", "deleted"])
def test_rebuild_from_the_ledger_sends_no_request(tmp_path, reflected, server, loss):
    home, env = reflected_home(tmp_path, reflected, server)
    database = home / "reflection.duckdb"
    with duckdb.connect(str(database), read_only=True) as con:
        replies = con.execute("SELECT count(*) FROM oracle.replies").fetchone()[0]
    healthy = reflection("doctor", env=env)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "healthy" in healthy.stdout and f" {replies} replies" in healthy.stdout
    assert "not in the ledger" not in healthy.stdout
    # Everything written so far reaches the main file, as after any checkpoint.
    with duckdb.connect(str(database)) as con:
        con.execute("CHECKPOINT")
    if loss == "damaged":
        damage_middle_half(database)
    else:
        database.unlink()

    doctor = reflection("doctor", env=env)
    text = no_traceback(doctor)
    assert doctor.returncode == 1, text
    assert str(database) in text and "reflection rebuild" in text
    assert ("missing" if loss == "deleted" else "damaged") in text
    for command in (("datasets", "list"), ("status",), ("scores",), STAGES):
        other = reflection(*command, env=env)
        assert other.returncode != 0, command
        assert "reflection rebuild" in no_traceback(other), command

    before = server.request_count
    rebuilt = reflection("rebuild", env=env)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert f"oracle.replies: {replies} rows" in rebuilt.stdout
    assert "registry.datasets: 1 rows" in rebuilt.stdout
    if loss == "damaged":
        aside = [p for p in database.parent.iterdir() if p.name.startswith("reflection.duckdb.damaged-")]
        assert aside and "moved aside" in rebuilt.stdout  # never deleted
    assert reflection("doctor", env=env).returncode == 0
    status = reflection("status", env=env).stdout
    assert status.count("the store has no record of: 00") == 4, status  # raw and the three reflection stages
    materialize_again(server, env, tmp_path)
    assert server.request_count == before
    assert "no record of" not in reflection("status", env=env).stdout


def test_a_store_from_before_the_ledger_is_backfilled(tmp_path, reflected, server):
    """doctor --backfill copies what the store holds and the ledger lacks (a store made by an
    earlier version), so a rebuild restores it too."""
    home, env = reflected_home(tmp_path, reflected, server)
    ledger = home / "reflection.duckdb.ledger"
    for segment in ledger.iterdir():
        segment.unlink()  # as a store made before the ledger existed
    doctor = reflection("doctor", env=env)
    assert doctor.returncode == 0
    assert "not in the ledger" in doctor.stdout and "--backfill" in doctor.stdout
    assert reflection("doctor", "--backfill", env=env).returncode == 0
    assert "not in the ledger" not in reflection("doctor", env=env).stdout
    rebuilt = reflection("rebuild", "--force", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    materialize_again(server, env, tmp_path)


def test_a_batch_record_survives_a_rebuild(tmp_path, reflected, server):
    """Requests exported as a batch file before the store was lost: after a rebuild the batch
    is listed as it was and the provider's results import against its restored requests, so
    materializing sends nothing."""
    home, env = reflected_home(tmp_path, reflected, server)
    source = write_json(tmp_path / "g.json", alpaca_rows(10, seed="g"))
    assert reflection("datasets", "add", "g", str(source), env=env).returncode == 0
    assert reflection("run", "--dataset", "g", "--select", "raw_dataset", env=env).returncode == 0
    out = tmp_path / "requests.jsonl"
    exported = reflection("batch", "export", "--dataset", "g", "--stage", "reflected_instructions", "--out", str(out), env=env)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 10
    listed = reflection("batch", "list", env=env).stdout
    assert " exported " in listed

    (home / "reflection.duckdb").unlink()
    assert reflection("rebuild", env=env).returncode == 0
    assert reflection("batch", "list", env=env).stdout == listed

    results = tmp_path / "results.jsonl"  # what `vllm run-batch` writes for those requests
    results.write_text("".join(json.dumps({
        "id": f"vllm-{n}", "custom_id": line["custom_id"], "error": None,
        "response": {"status_code": 200, "request_id": "r", "body": {
            "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reflection_oracle.respond(line["body"])},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50}}},
    }) + "\n" for n, line in enumerate(lines)))
    imported = reflection("batch", "import", str(results), env=env)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    before = server.request_count
    run = reflection("run", "--dataset", "g", "--select", "reflected_instructions", "--upstream", env=env)
    assert run.returncode == 0, run.stderr
    assert server.request_count == before
