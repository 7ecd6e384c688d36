"""Batch mode against a scripted OpenAI Batch API on 127.0.0.1 (tests/fakes/batch_server.py):
files of at most BATCH_MAX_REQUESTS lines, replies stored before they are handed on, failed
and expired lines retried alone, a whole-batch failure retried once and then reported, the
batch price, and never an online call or a request answered twice."""

import duckdb
import pytest

from reflection_assets.engines.oracle.batch import BatchScope
from reflection_assets.engines.oracle.batch_lines import chat_body
from reflection_assets.engines.oracle.batch_store import BatchStore
from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.oracle.pricing import cost_usd, price_for
from reflection_assets.engines.oracle.settings import settings_from_env
from reflection_assets.engines.store.storage import Database
from reflection_assets.errors import SettingsError
from tests.fakes.batch_server import FakeBatchAPI


@pytest.fixture
def env(monkeypatch):
    def configure(server: FakeBatchAPI, **extra: str) -> None:
        values = {
            "BACKEND": "openai", "MODEL": "gpt-4o-mini", "BASE_URL": server.base_url, "API_KEY": "sk-test-batch-0123456789",
            "MODE": "batch", "BATCH_POLL_S": "0.02", "MAX_RETRIES": "2", **extra,
        }
        for name, value in values.items():
            monkeypatch.setenv(f"REFLECTION_ORACLE_{name}", value)

    return configure


def client_for(tmp_path, stage="reflected_instructions"):
    db = Database(tmp_path / "r.duckdb")
    return OracleClient(settings_from_env(), db, tmp_path, scope=BatchScope("oracle", "d", stage, 0)), db


def requests_of(client, n, tag=""):
    return [client.request([("user", f"question {tag}{i}")], "v1") for i in range(n)]


def stored(db, sql):
    with duckdb.connect(str(db.path), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_lines_split_retried_alone_and_priced_at_the_batch_discount(tmp_path, env):
    transient, refused = {}, set()

    def line_plan(custom_id, body, attempt):
        text = body["messages"][-1]["content"]
        if text.endswith(("3", "7")) and attempt == 1:  # a 5xx body, then fine
            return ("status", 500, "the server had an error")
        if text.endswith("5") and attempt < 3:  # an error object, twice
            transient[custom_id] = attempt
            return ("error", "server_error", "try again later")
        if text.endswith("19"):
            refused.add(custom_id)
            return ("status", 400, "this model's maximum context length is 8192 tokens")
        return "ok"

    with FakeBatchAPI(line_plan=line_plan) as server:
        env(server, BATCH_MAX_REQUESTS="8")
        client, db = client_for(tmp_path)
        requests = requests_of(client, 20)
        replies = {r.request_key: r for r in client.complete_many(requests)}

    assert len(replies) == 20 and server.chat == []  # no online call, ever
    assert [server.batches[b]["request_counts"]["total"] for b in server.created[:3]] == [8, 8, 4]  # the split
    # Retries hold only the failed lines: 3 and 7, 13 and 17 (5xx) and 5 and 15 (error objects).
    later = [server.batches[b]["request_counts"]["total"] for b in server.created[3:]]
    assert sum(later) == 6 + 2 and all(n <= 6 for n in later)
    assert max(server.answered.values()) == 1  # nothing answered twice
    [failed] = [r for r in replies.values() if not r.ok]
    assert failed.request_key in refused and failed.error_kind == "permanent" and "context length" in failed.error
    assert all(r.ok for k, r in replies.items() if k in transient)
    rows = stored(db, "SELECT count(*), sum(cost_usd), sum(prompt_tokens), sum(completion_tokens) FROM oracle.replies")
    count, cost, prompt, completion = rows[0]
    assert count == 19
    assert cost == pytest.approx(cost_usd(price_for("openai", "gpt-4o-mini", None, None), prompt, completion) * 0.5)
    assert stored(db, "SELECT DISTINCT served_model FROM oracle.replies") == [("gpt-4o-mini",)]
    assert client.stats.cost_usd == pytest.approx(cost) and client.stats.sent == 20


@pytest.mark.parametrize(
    "plan, expect",
    [
        (lambda n: "expire" if n == 1 else "complete", "expired lines go in a batch of their own"),
        (lambda n: "cancel" if n == 1 else "complete", "cancelled by the provider: once more"),
        (lambda n: "fail" if n == 1 else "complete", "failed as a whole: once more"),
        (lambda n: "fail", "failed twice: reported"),
    ],
)
def test_batches_that_end_badly(tmp_path, env, plan, expect):
    with FakeBatchAPI(batch_plan=plan) as server:
        env(server)
        client, db = client_for(tmp_path)
        replies = list(client.complete_many(requests_of(client, 10)))
    assert len(replies) == 10 and server.chat == [] and max(server.answered.values(), default=0) <= 1
    store = BatchStore(db)
    records = store.listed()
    assert all(r.collected for r in records)
    if expect == "failed twice: reported":
        assert len(server.created) == 2 and not any(r.ok for r in replies)
        assert all("failed twice" in r.error and "does not exist" in r.error for r in replies)
        assert records[1].whole_retry and records[1].retry_of == records[0].batch_key
        assert stored(db, "SELECT count(*) FROM oracle.failures") == [(10,)]
    else:
        assert all(r.ok for r in replies) and len(server.created) == 2
        second = records[1]
        assert second.requests == (10 if "failed" in expect else 5)  # half were answered before the end
        assert second.whole_retry == ("once more" in expect) and second.retry_of == records[0].batch_key


def test_batch_mode_needs_an_endpoint(monkeypatch):
    monkeypatch.setenv("REFLECTION_ORACLE_MODE", "batch")
    with pytest.raises(SettingsError, match="needs the openai backend"):
        settings_from_env()
    monkeypatch.setenv("REFLECTION_ORACLE_MODE", "offline")
    with pytest.raises(SettingsError, match="expected one of online, batch"):
        settings_from_env()


def test_a_batch_line_is_the_body_the_online_backend_sends(tmp_path, env):
    with FakeBatchAPI() as server:
        env(server)
        client, _ = client_for(tmp_path)
        continued = client.request([("user", "go on"), ("assistant", "[Better Answer]\n")], "v1", stop=["[End]"])
    body = chat_body(continued)
    assert body["stop"] == ["[End]"] and body["continue_final_message"] is True and body["model"] == "gpt-4o-mini"


def test_a_batch_submitted_but_not_recorded_is_found_by_its_metadata(tmp_path, env):
    """Killed after the provider accepted a batch and before its id was written down: the
    next run finds it at the provider by the batch key in its metadata, and submits nothing."""
    from reflection_assets.engines.oracle.batch import batch_api
    from reflection_assets.engines.oracle.batch_lines import request_line

    with FakeBatchAPI() as server:
        env(server)
        client, db = client_for(tmp_path)
        requests = requests_of(client, 6)
        store = BatchStore(db)
        record = store.create(kind="api", role="oracle", base_url=server.base_url, model="gpt-4o-mini",
                              scope={"dataset": "d"}, requests=requests, attempt=1)
        api = batch_api(client.settings)
        uploaded = api.files.create(file=("x.jsonl", "".join(map(request_line, requests)).encode()), purpose="batch")
        store.update(record.batch_key, input_file_id=uploaded.id)
        api.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                           metadata={"reflection_batch": record.batch_key})
        api.close()
        # And one recorded before its upload: nothing reached the provider; it is dropped.
        early = store.create(kind="api", role="oracle", base_url=server.base_url, model="gpt-4o-mini",
                             scope={"dataset": "d"}, requests=requests_of(client, 2, "other "), attempt=1)
        replies = list(client.complete_many(requests + requests_of(client, 2, "other ")))
        assert all(r.ok for r in replies) and len(replies) == 8
        assert len(server.created) == 2 and server.uploads == 2  # the adopted one, and one for the 2 others
        assert store.get(record.batch_key).provider_batch_id == server.created[0]
        assert early.batch_key not in {r.batch_key for r in store.listed()}
        assert max(server.answered.values()) == 1


def test_constrained_requests_are_refused_as_online(tmp_path, env):
    with FakeBatchAPI() as server:
        env(server)
        client, _ = client_for(tmp_path)
        request = client.request([("user", "good?")], "judge", constraint="yes_score_1_10")
        [reply] = list(client.complete_many([request]))
    assert reply.error_kind == "permanent" and "needs the local backend" in reply.error and server.created == []


def test_a_batch_the_provider_no_longer_knows_is_submitted_once_more(tmp_path, env):
    with FakeBatchAPI() as server:
        env(server)
        client, db = client_for(tmp_path)
        requests = requests_of(client, 4)
        store = BatchStore(db)
        gone = store.create(kind="api", role="oracle", base_url=server.base_url, model="gpt-4o-mini",
                            scope={"dataset": "d"}, requests=requests, attempt=1)
        store.update(gone.batch_key, input_file_id="file-gone", provider_batch_id="batch_deleted", status="in_progress")
        replies = list(client.complete_many(requests))
    assert all(r.ok for r in replies) and len(server.created) == 1
    assert store.get(gone.batch_key).status == "failed" and "has no batch batch_deleted" in store.get(gone.batch_key).message
