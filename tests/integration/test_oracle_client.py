"""The oracle client against a real HTTP server speaking the chat-completions protocol."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.oracle.replies import ErrorKind
from reflection_assets.engines.oracle.settings import OracleSettings
from reflection_assets.engines.store.storage import Database
from tests.fakes.openai_server import FakeOpenAI

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sk-test-0123456789abcdef"


def settings(server: FakeOpenAI, **kw) -> OracleSettings:
    values = dict(
        backend="openai",
        model="gpt-4o-mini",
        base_url=server.base_url,
        api_key=API_KEY,
        max_concurrency=16,
        max_retries=4,
        flush_interval_s=0.1,
        progress_interval_s=0.5,
    )
    values.update(kw)
    return OracleSettings(**values)


def client_for(server, tmp_path, **kw) -> OracleClient:
    return OracleClient(settings(server, **kw), Database(tmp_path / "db.duckdb"), tmp_path)


def questions(client: OracleClient, n: int, start: int = 0):
    return [client.request([("user", f"question {i}")], "v1") for i in range(start, start + n)]


def question_number(body: dict) -> int:
    return int(body["messages"][-1]["content"].split()[-1])


def db_rows(tmp_path, sql):
    with duckdb.connect(str(tmp_path / "db.duckdb")) as con:
        return con.execute(sql).fetchall()


def test_replies_are_stored_before_they_are_returned(tmp_path):
    with FakeOpenAI(latency_s=0.01) as server:
        client = client_for(server, tmp_path)
        requests = questions(client, 40)
        db = Database(tmp_path / "db.duckdb")
        for reply in client.complete_many(requests):
            with db.connect() as con:
                stored = con.execute(
                    "SELECT reply_text, finish_reason, fingerprint FROM oracle.replies WHERE request_key = ?",
                    [reply.request_key],
                ).fetchone()
            assert stored == (reply.text, "stop", client.fingerprint("v1"))
    [(count, tokens, cost, latency)] = db_rows(
        tmp_path,
        "SELECT count(*), sum(prompt_tokens + completion_tokens), sum(cost_usd), min(latency_s) FROM oracle.replies",
    )
    assert count == 40 and tokens > 0 and cost > 0 and latency > 0
    assert client.stats.succeeded == 40 and client.stats.cost_usd == pytest.approx(cost)


def test_a_second_run_and_duplicates_send_nothing(tmp_path):
    with FakeOpenAI() as server:
        first = client_for(server, tmp_path)
        requests = questions(first, 30)
        assert len(list(first.complete_many(requests + requests[:10]))) == 30
        assert server.request_count == 30
        second = client_for(server, tmp_path)
        replies = list(second.complete_many(questions(second, 30)))
        assert server.request_count == 30
        assert all(r.cached for r in replies) and second.stats.cached == 30 and second.stats.sent == 0


def test_429_with_retry_after_backs_off_and_recovers(tmp_path):
    def plan(body, nth):
        return ("status", 429, "rate limited", 0.3) if nth == 1 and question_number(body) % 2 == 0 else "ok"

    with FakeOpenAI(latency_s=0.02, plan=plan) as server:
        client = client_for(server, tmp_path)
        started = time.monotonic()
        replies = list(client.complete_many(questions(client, 40)))
        elapsed = time.monotonic() - started
    assert all(r.ok for r in replies) and len(replies) == 40
    assert server.request_count == 60  # each of the 20 throttled ones asked twice
    assert client.stats.throttled == 20 and client.stats.retries == 20
    assert client.stats.concurrency_decreases >= 1
    assert elapsed >= 0.3  # Retry-After was honoured


def test_a_request_waiting_out_its_backoff_holds_no_worker(tmp_path):
    """One request in flight at a time: the first is turned away with Retry-After 0.5 s,
    and the others are sent meanwhile rather than after its wait."""

    def plan(body, nth):
        return ("status", 429, "rate limited", 0.5) if question_number(body) == 0 and nth == 1 else "ok"

    with FakeOpenAI(latency_s=0.02, plan=plan) as server:
        client = client_for(server, tmp_path, max_concurrency=1)
        replies = list(client.complete_many(questions(client, 4)))
        order = [question_number(body) for body in server.received]
    assert all(r.ok for r in replies) and client.stats.retries == 1
    assert order == [0, 1, 2, 3, 0]


@pytest.mark.parametrize("fault", ["drop", "malformed", ("status", 500, "boom"), ("status", 503, "busy")])
def test_transient_faults_are_retried_without_resending_successes(tmp_path, fault):
    def plan(body, nth):
        return fault if nth == 1 and question_number(body) < 5 else "ok"

    with FakeOpenAI(plan=plan) as server:
        client = client_for(server, tmp_path)
        replies = list(client.complete_many(questions(client, 20)))
        counts = sorted(server.by_body.values())
    assert all(r.ok for r in replies)
    assert counts == [1] * 15 + [2] * 5  # only the five faulted requests were sent again
    assert client.stats.retries == 5


@pytest.mark.parametrize(
    ("status", "message"),
    [(400, "This model's maximum context length is 8192 tokens"), (401, "Incorrect API key"), (404, "model not found")],
)
def test_permanent_errors_are_not_retried_and_are_recorded(tmp_path, status, message):
    def plan(body, nth):
        return ("status", status, message) if question_number(body) == 3 else "ok"

    with FakeOpenAI(plan=plan) as server:
        client = client_for(server, tmp_path)
        replies = {r.request_key: r for r in client.complete_many(questions(client, 6))}
        failed = [r for r in replies.values() if not r.ok]
        assert len(failed) == 1 and failed[0].error_kind == ErrorKind.PERMANENT
        assert f"HTTP {status}: {message}" in failed[0].error and failed[0].status == status
        assert server.request_count == 6
        assert db_rows(tmp_path, "SELECT error_kind, status, message FROM oracle.failures") == [
            ("permanent", status, failed[0].error)
        ]
        # a later run asks again only for the one that failed
        again = client_for(server, tmp_path)
        list(again.complete_many(questions(again, 6)))
        assert server.request_count == 7 and again.stats.cached == 5


def test_retries_are_bounded(tmp_path):
    with FakeOpenAI(plan=lambda body, nth: ("status", 503, "overloaded")) as server:
        client = client_for(server, tmp_path, max_retries=2)
        [reply] = list(client.complete_many(questions(client, 1)))
    assert reply.error_kind == ErrorKind.TRANSIENT and "after 3 attempts" in reply.error
    assert server.request_count == 3


def test_finish_reason_length_is_recorded_as_truncated(tmp_path):
    with FakeOpenAI(plan=lambda body, nth: "length" if question_number(body) == 0 else "ok") as server:
        client = client_for(server, tmp_path)
        replies = {r.request_key: r for r in client.complete_many(questions(client, 3))}
    truncated = [r for r in replies.values() if r.truncated]
    assert len(truncated) == 1 and client.stats.truncated == 1
    assert db_rows(tmp_path, "SELECT count(*) FROM oracle.replies WHERE finish_reason = 'length'") == [(1,)]


def test_the_budget_stops_new_requests_and_keeps_what_was_paid(tmp_path, caplog):
    # a token costs $1 here: each reply costs ~$9, a request's worst case ~$14 (its prompt
    # plus max_tokens=10), so a $100 budget admits about ten.
    with FakeOpenAI(latency_s=0.01) as server:
        client = client_for(
            server, tmp_path, max_tokens=10, max_concurrency=2,
            price_input_per_mtok=1_000_000, price_output_per_mtok=1_000_000, budget_usd=100,
        )
        with caplog.at_level(logging.WARNING):
            replies = list(client.complete_many(questions(client, 50)))
    paid = [r for r in replies if r.ok]
    stopped = [r for r in replies if r.error_kind == ErrorKind.BUDGET]
    assert 5 <= len(paid) <= 12 and len(paid) + len(stopped) == 50
    assert client.stats.cost_usd <= 100 and server.request_count == len(paid)
    worst_case = stopped[0] and (len("question 10") // 4 + 10)  # prompt estimate + max_tokens
    assert client.stats.cost_usd + worst_case > 100  # it stopped only when it had to
    assert db_rows(tmp_path, "SELECT count(*) FROM oracle.replies") == [(len(paid),)]
    assert client.budget_exhausted and "budget of $100.00 reached" in caplog.text


def test_the_api_key_never_reaches_the_database_or_the_logs(tmp_path, caplog):
    def plan(body, nth):
        if question_number(body) == 0:
            return ("status", 401, f"Incorrect API key provided: {API_KEY}.")
        return "ok"

    with FakeOpenAI(plan=plan) as server, caplog.at_level(logging.DEBUG):
        client = client_for(server, tmp_path)
        replies = list(client.complete_many(questions(client, 5)))
        assert all(h.get("Authorization") == f"Bearer {API_KEY}" for h in server.headers)
    assert any(not r.ok and "***" in r.error for r in replies)
    assert API_KEY not in caplog.text and API_KEY[3:] not in caplog.text
    assert API_KEY.encode() not in (tmp_path / "db.duckdb").read_bytes()
    assert all(API_KEY not in str(r) for r in replies)


def test_no_batch_waits_for_its_slowest_member(tmp_path):
    slow = lambda body: 1.5 if question_number(body) == 0 else None  # noqa: E731
    with FakeOpenAI(latency_s=0.01, latency_for=slow) as server:
        client = client_for(server, tmp_path)
        requests = questions(client, 30)
        started = time.monotonic()
        arrivals = [(r.request_key, time.monotonic() - started) for r in client.complete_many(requests)]
    assert arrivals[-1][0] == requests[0].key and arrivals[-1][1] >= 1.5
    # The other 29 did not wait for it (timed against its arrival: the client's start, the
    # first open of the store and the openai SDK's import, about 2 s when nothing imported
    # it before, come before either).
    assert all(at < arrivals[-1][1] - 1.0 for _, at in arrivals[:-1])


def test_progress_is_logged_at_a_steady_cadence(tmp_path, caplog):
    with FakeOpenAI(latency_s=0.05, max_concurrency=4) as server, caplog.at_level(logging.INFO):
        client = client_for(server, tmp_path, max_concurrency=4, progress_interval_s=0.3)
        list(client.complete_many(questions(client, 60)))
    lines = [r.message for r in caplog.records if r.message.startswith("oracle: ") and "ETA" in r.message]
    assert len(lines) >= 2
    assert "req/s" in lines[0] and "tokens" in lines[0] and "$" in lines[0]
    assert any("60/60 done" in r.message for r in caplog.records)


def ledger_numbers(database: Path) -> list[int]:
    """The question numbers of the reply lines in the ledger's segments, one per line."""
    import json

    from reflection_assets.engines.store.ledger import ledger_folder, read_segment, segment_paths

    numbers = []
    for path in segment_paths(ledger_folder(database)):
        for event in read_segment(path).events:
            if event["t"] == "oracle.replies":
                numbers += [int(json.loads(r["request_json"])["messages"][0][1].split()[-1]) for r in event["rows"]]
    return numbers


def test_a_killed_run_buys_again_only_what_was_in_flight(tmp_path):
    """SIGKILL at full speed: replies already answered are in the database or in the
    ledger (a line each, as they arrive); the ledger reads up to its last complete line; the
    restart stores what only the ledger had and sends only what was never answered (plus the
    few that were on the wire when the process died), and no reply is logged twice."""
    from reflection_assets.engines.store.ledger import ledger_folder, read_segment, segment_paths

    database = tmp_path / "db.duckdb"
    n, in_flight = 400, 8
    with FakeOpenAI(latency_s=0.05, max_concurrency=in_flight) as server:
        command = [sys.executable, "-m", "tests.fakes.oracle_worker", server.base_url, str(database), str(n)]
        child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
        seen_before_kill = set()
        assert child.stdout is not None
        for line in child.stdout:
            seen_before_kill.add(int(line))
            if len(seen_before_kill) >= 60:
                break
        time.sleep(0.5)  # more replies arrive; the database gets them only once a second
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        sent_first = {question_number(b) for b in server.received}
        with duckdb.connect(str(database)) as con:
            logged = {
                int(row[0].split()[-1])
                for row in con.execute(
                    "SELECT json_extract_string(request_json, '$.messages[0][1]') FROM oracle.replies"
                ).fetchall()
            }
        [orphan] = segment_paths(ledger_folder(database))
        with open(orphan, "a") as torn:  # a line the kill cut in the middle
            torn.write('{"t":"oracle.replies","op":"put","rows":[{"request_key":"abc')
        assert "unfinished line" in read_segment(orphan).torn
        in_ledger = ledger_numbers(database)
        assert len(in_ledger) == len(set(in_ledger))
        assert seen_before_kill <= logged <= set(in_ledger)  # stored after it is logged, handed out after stored
        stored = set(in_ledger)
        assert len(stored) < n  # the kill really came midway
        before = server.request_count
        rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        resent = [question_number(b) for b in server.received[before:]]
        with duckdb.connect(str(database)) as con:
            in_database = con.execute("SELECT count(*) FROM oracle.replies").fetchone()[0]
    rebought = set(resent) & sent_first
    print(f"answered before the kill: {len(stored)} ({len(logged)} in the database, "
          f"{len(stored - logged)} only in the ledger); bought again: {len(rebought)}")
    assert not set(resent) & stored
    assert set(resent) | stored == set(range(n))
    assert len(rebought) <= in_flight  # only what was on the wire when it died
    assert in_database == n
    after = ledger_numbers(database)
    assert sorted(after) == list(range(n))  # every reply once: none lost, none logged twice
    # The orphan was replayed and compressed, the rerun's own segment compressed at its exit.
    assert all(p.name.endswith(".jsonl.gz") for p in segment_paths(ledger_folder(database)))
