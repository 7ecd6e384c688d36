"""The observation notices a new model behind the oracle's name: a scripted OpenAI-compatible
server changes the snapshot it reports (the completion's `model`, its system_fingerprint,
vLLM's `root`, Ollama's digest) under the same requested name. Unchanged, nothing is marked;
after the swap exactly the shards made before it are stale, the automation requests them and
their new replies name the new snapshot; a probe that fails marks nothing and says why."""

import time

import dagster as dg
import pytest

from reflection_assets import cli
from reflection_assets.assets.oracles import latest_facts
from reflection_assets.definitions import defs
from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.oracle.identity import ProbeError, local_details, probe
from reflection_assets.engines.oracle.settings import settings_from_env
from reflection_assets.engines.store.storage import Database
from reflection_assets.method.served import ServedIdentity
from reflection_assets.headless.runner import observe as observe_all
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.reflection_oracle import plan, respond
from tests.integration.test_automation import RECORD_STAGES, Ticks, status
from tests.integration.test_reflection_assets import query, run, tagged  # noqa: F401 (fixture)

OLD, NEW = "gpt-4o-mini-2024-07-18", "gpt-4o-mini-2025-04-14"


@pytest.fixture
def server(monkeypatch):
    with FakeOpenAI(responder=respond, plan=plan, served_model=OLD, system_fingerprint="fp_old") as fake:
        monkeypatch.setenv("REFLECTION_ORACLE_BACKEND", "openai")
        monkeypatch.setenv("REFLECTION_ORACLE_MODEL", "gpt-4o-mini")
        monkeypatch.setenv("REFLECTION_ORACLE_BASE_URL", fake.base_url)
        monkeypatch.setenv("REFLECTION_ORACLE_API_KEY", "sk-test-reflection-key")
        yield fake


def observe(instance) -> str:
    observed = observe_all(instance, defs)
    assert "error" not in observed["oracle"], observed["oracle"]
    return str(observed["oracle"]["data_version"])


def served_rows(home, shards):
    """What served the replies behind the current rows of the given shards (answered ones)."""
    return set(query(
        home,
        "SELECT DISTINCT c.served_model FROM lineage.oracle_calls c JOIN raw.records r USING (dataset, record_id) "
        f"WHERE c.model IS NOT NULL AND r.shard IN ({', '.join(str(int(s)) for s in shards)})",
    ))


def test_a_new_snapshot_behind_the_name_re_recycles_only_what_it_made(home, tagged, server):  # noqa: F811
    instance = tagged
    tick = Ticks(instance)
    first = observe(instance)
    run(instance, shards=["00", "02"])  # two of four shards; 01 and 03 never were
    assert tick() == {}
    assert served_rows(home, ["00", "02"]) == {(OLD,)}
    # The materialization's metadata says which snapshot produced its replies.
    event = instance.get_latest_materialization_event(dg.AssetKey("reflected_instructions"))
    served_by = event.asset_materialization.metadata["served_by"].value
    assert set(served_by) == {f"{OLD} (fp_old)"} and sum(served_by.values()) > 0

    probes = len(server.probes)
    for _ in range(3):  # the nightly observation finds the same snapshot: nothing to do
        assert observe(instance) == first
        assert tick() == {}
    # One 1-token probe per observation of each role (the judge uses the oracle's endpoint).
    assert len(server.probes) == probes + 3 * 2 and all(p["max_tokens"] == 1 for p in server.probes)
    assert server.listings >= 3

    server.served_model, server.system_fingerprint = NEW, "fp_new"  # the alias moves
    second = observe(instance)
    assert second != first
    assert latest_facts(instance, "oracle")["served_model"] == NEW
    report = status(instance)
    why = f"oracle changed: served model {OLD} → {NEW}"
    assert report["reflected_instructions"].stale == {"00": [why], "02": [why]}
    assert report["reflected_responses"].stale == {"00": [why, "upstream stale (reflected_instructions)"],
                                                   "02": [why, "upstream stale (reflected_instructions)"]}
    assert report["reflected_instructions"].missing == ["01", "03"]
    stale = {"tagged|00", "tagged|02"}
    assert tick() == {key.to_user_string(): stale for key in RECORD_STAGES}
    assert tick() == {}

    # What the automation launches: the same requested name, asked again, answered by NEW.
    sent = server.request_count
    run(instance, keys=RECORD_STAGES, shards=["00", "02"])
    assert server.request_count > sent
    assert {b["model"] for b in server.received[sent:]} == {"gpt-4o-mini"}
    assert served_rows(home, ["00", "02"]) == {(NEW,)}
    assert tick() == {} and all(not s.stale for s in status(instance).values())
    # Replies the new snapshot already gave are not bought again.
    sent = server.request_count
    run(instance, keys=RECORD_STAGES, shards=["00", "02"])
    assert [b for b in server.received[sent:] if "#reject" not in b["messages"][-1]["content"]] == []
    assert tick() == {}

    # Back to the first snapshot: stale again, and its replies are all in the cache (only the
    # HTTP 400, never cached, is asked again).
    server.served_model, server.system_fingerprint = OLD, "fp_old"
    assert observe(instance) == first
    assert tick() == {key.to_user_string(): stale for key in RECORD_STAGES}
    sent = server.request_count
    run(instance, keys=RECORD_STAGES, shards=["00", "02"])
    assert all("#reject" in b["messages"][-1]["content"] for b in server.received[sent:])
    assert served_rows(home, ["00", "02"]) == {(OLD,)}


def test_a_changed_serving_configuration_is_said_and_model_level_ignores_it(home, tagged, server, monkeypatch):  # noqa: F811
    instance = tagged
    first = observe(instance)
    run(instance, shards=["01"])
    server.system_fingerprint = "fp_other"
    assert observe(instance) != first
    assert status(instance)["reflected_instructions"].stale == {"01": ["oracle changed: serving configuration changed"]}
    server.system_fingerprint = "fp_old"
    assert observe(instance) == first

    # vLLM restarted with other weights under the same served name: its listing's root says so.
    server.root = "/models/llama-3-8b-instruct"
    rooted = observe(instance)
    assert rooted != first and latest_facts(instance, "oracle")["served_root"] == server.root
    assert status(instance)["reflected_instructions"].stale == {"01": ["oracle changed: serving configuration changed"]}
    server.root = None

    monkeypatch.setenv("REFLECTION_ORACLE_PROBE", "model")  # system_fingerprint left out
    at_model_level = observe(instance)
    server.system_fingerprint = "fp_yet_another"
    assert observe(instance) == at_model_level
    server.served_model = NEW
    assert observe(instance) != at_model_level


@pytest.mark.parametrize("failure", ["http500", "timeout"])
def test_a_probe_that_fails_marks_nothing_and_says_why(home, tagged, server, monkeypatch, capsys, failure):  # noqa: F811
    instance = tagged
    tick = Ticks(instance)
    monkeypatch.setenv("REFLECTION_ORACLE_TIMEOUT", "1")
    first = observe(instance)
    run(instance, shards=["00"])
    assert tick() == {}
    server.served_model = NEW  # it has changed, but the probe cannot see it
    server.probe_plan = (lambda nth: ("status", 500, "internal error")) if failure == "http500" else (lambda nth: ("sleep", 3))
    observed = observe_all(instance, defs)
    expected = "HTTP 500" if failure == "http500" else "no reply within 1 s (timeout)"
    assert expected in observed["oracle"]["error"] and "nothing changed" in observed["oracle"]["error"]
    assert "sk-test" not in observed["oracle"]["error"] and observed["oracle"]["probe_error"]
    assert "error" not in observed["student"]  # the other sources are observed all the same
    assert instance.get_latest_data_version_record(dg.AssetKey("oracle"), is_source=True).asset_observation.data_version == first
    assert all(not s.stale for s in status(instance).values())
    assert tick() == {}
    # `reflection observe` says it and exits 1; a run says it and goes on with what was last
    # observed for its settings: it needs no probe of its own.
    assert cli.main(["observe"]) == 1
    said = capsys.readouterr()
    assert f"oracle   observation failed: probe of 'gpt-4o-mini' at {server.base_url}" in said.out
    probes = len(server.probes)
    started = time.time()
    run(instance, shards=["01"])
    assert "reflection: observing the oracle failed: probe of" in capsys.readouterr().err
    # The run's own observation of the oracle (a probe and its retry), failed again; the judge
    # and the student, which recycling does not read, are not observed by it.
    assert len(server.probes) == probes + 2
    for source in ("judge", "student"):
        assert instance.get_latest_data_version_record(dg.AssetKey(source), is_source=True).timestamp < started


def test_the_probe_off_counts_only_our_settings(home, tagged, server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("REFLECTION_ORACLE_PROBE", "off")
    monkeypatch.setenv("REFLECTION_JUDGE_PROBE", "off")
    first = observe(tagged)
    assert first == latest_facts(tagged, "oracle")["fingerprint"]
    server.served_model = NEW
    assert observe(tagged) == first
    run(tagged, shards=["00"])
    assert server.probes == [] and server.listings == 0
    assert served_rows(home, ["00"]) == {(NEW,)}  # still recorded with every reply


def test_the_probe_reads_vllm_root_and_ollama_digest(server, monkeypatch):
    settings = settings_from_env()
    plain = probe(settings)
    assert plain.model == OLD and plain.system_fingerprint == "fp_old" and plain.details == ()
    server.root = "/weights/v2"
    server.ollama_digest = "sha256:abc123"
    detailed = probe(settings)
    assert dict(detailed.details) == {"root": "/weights/v2", "digest": "sha256:abc123"}
    assert detailed.digest != plain.digest
    assert ServedIdentity.from_metadata(detailed.as_metadata()) == detailed
    server.probe_plan = lambda nth: ("status", 500, "boom")
    with pytest.raises(ProbeError, match="HTTP 500"):
        probe(settings)


def test_a_new_embedded_model_file_is_a_new_identity(tmp_path):
    first = local_details("SmolLM2-135M-Instruct")
    assert first[0][0] == "model_file_sha256" and local_details("embedded") == first
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights one")
    before = local_details(str(folder))
    (folder / "model.safetensors").write_bytes(b"other weights, other size")
    assert local_details(str(folder)) != before


def test_requests_keep_their_keys_under_the_first_snapshot(home, tmp_path, server):
    """The first snapshot a database sees keeps pre-probe keys (upgrading buys nothing
    again); another snapshot's requests get keys of their own; back to the first, the
    same keys as before."""
    settings = settings_from_env()
    db = Database(home / "reflection.duckdb")
    a, b = ServedIdentity(OLD, "fp_old"), ServedIdentity(NEW, "fp_new")
    messages = [("user", "hello")]
    legacy = OracleClient(settings, db, tmp_path).request(messages, "v").key
    assert OracleClient(settings, db, tmp_path, served=a).request(messages, "v").key == legacy
    other = OracleClient(settings, db, tmp_path, served=b).request(messages, "v").key
    assert other != legacy
    assert OracleClient(settings, db, tmp_path, served=a).request(messages, "v").key == legacy
    # Counted as `model`, the first snapshot with another system_fingerprint is still itself.
    same_model = ServedIdentity(OLD, "fp_changed", probe="model")
    assert OracleClient(settings, db, tmp_path, served=same_model).request(messages, "v").key == legacy
