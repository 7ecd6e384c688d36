"""The reflection stages materialized through Dagster against a scripted OpenAI-compatible
oracle: rows per outcome, caching across re-materializations, prompt and model changes."""

import dagster as dg
import duckdb
import pytest

from reflection_assets.definitions import JOB_FOR_PARTITIONS, RECORD_PARTITIONS, defs
from reflection_assets.method import prompts
from reflection_assets.method.profiles import PAPER_PROFILE
from reflection_assets.headless.runner import run_record_partitions
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.reflection_oracle import plan, respond
from tests.integration.test_raw_dataset import register
from tests.conftest import write_json

ALL = [dg.AssetKey(n) for n in ("raw_dataset", "reflected_instructions", "reflected_responses", "recycled_dataset")]
ROWS = [
    {"instruction": f"Plain task {i}", "input": "some context" if i % 3 == 0 else "", "output": f"answer {i}"}
    for i in range(13)
] + [
    {"instruction": "Name a color #missing", "output": "Red"},
    {"instruction": "Name a fruit #fixable", "output": "Apple"},
    {"instruction": "Name a tree #echo", "output": "Oak"},
    {"instruction": "Name a river #truncate", "output": "Nile"},
    {"instruction": "Name a city #reject", "output": "Rome"},
]


@pytest.fixture
def oracle(monkeypatch):
    with FakeOpenAI(responder=respond, plan=plan) as server:
        monkeypatch.setenv("REFLECTION_ORACLE_BACKEND", "openai")
        monkeypatch.setenv("REFLECTION_ORACLE_MODEL", "gpt-4o-mini")
        monkeypatch.setenv("REFLECTION_ORACLE_BASE_URL", server.base_url)
        monkeypatch.setenv("REFLECTION_ORACLE_API_KEY", "sk-test-reflection-key")
        yield server


@pytest.fixture
def tagged(home, instance, tmp_path):
    register(instance, "tagged", write_json(tmp_path / "tagged.json", ROWS))
    return instance


def run(instance, keys=ALL, shards=None, **config):
    outcomes = run_record_partitions(
        instance, defs, JOB_FOR_PARTITIONS[RECORD_PARTITIONS], keys, "tagged", shards, "WARNING",
        asset_config=config or None,
    )
    assert all(o.success for o in outcomes), [o.error for o in outcomes]
    return outcomes


def query(home, sql, params=()):
    with duckdb.connect(str(home / "reflection.duckdb")) as con:
        return con.execute(sql, list(params)).fetchall()


def by_instruction(home, sql):
    return {row[0]: row[1:] for row in query(home, sql)}


def test_rows_per_outcome(home, tagged, oracle):
    outcomes = run(tagged)
    phase1 = by_instruction(
        home,
        "SELECT r.instruction, i.outcome, i.repaired, i.replaced, i.new_instruction IS NULL, i.repair_key IS NULL "
        "FROM reflect.instructions i JOIN raw.records r USING (dataset, record_id)",
    )
    assert phase1["Name a color #missing"] == ("missing_marker", False, False, True, False)
    assert phase1["Name a fruit #fixable"] == ("ok", True, True, False, False)
    assert phase1["Name a tree #echo"] == ("ok", True, True, False, False)  # the repair fixed it
    assert phase1["Name a river #truncate"] == ("ok", True, True, False, False)
    assert phase1["Name a city #reject"] == ("oracle_error", False, False, True, True)  # no repair for errors
    assert phase1["Plain task 1"] == ("ok", False, True, False, True)

    recycled = by_instruction(
        home,
        "SELECT r.instruction, c.provenance, c.input, c.instruction = r.instruction, c.output "
        "FROM reflect.recycled c JOIN raw.records r USING (dataset, record_id)",
    )
    assert len(recycled) == len(ROWS)
    assert recycled["Plain task 0"][:3] == ("both", "", False)  # the input was folded in
    # kept pairs keep their own instruction; the better answer belongs to that instruction
    assert recycled["Name a color #missing"][:3] == ("response_reflected", "", True)
    assert "A better answer than 'Red'" in recycled["Name a color #missing"][3]
    # every check passed on every shard
    assert all(o.failed_checks == [] for o in outcomes)
    lineage = query(
        home,
        "SELECT count(*) FROM reflect.recycled c JOIN oracle.replies o ON o.request_key = c.instruction_request_key",
    )
    assert lineage == [(len(ROWS) - 1,)]  # all but the rejected request have a stored reply


def test_metadata_outcomes_and_checks(home, tagged, oracle):
    run(tagged)
    totals = {}
    for record in tagged.fetch_materializations(dg.AssetKey("reflected_instructions"), limit=100).records:
        md = record.asset_materialization.metadata
        for name, count in md["outcomes"].value.items():
            totals[name] = totals.get(name, 0) + count
        assert {"preview", "mean_chars_of_replaced", "oracle/fingerprint", "oracle/sent", "cost_usd"} <= set(md)
    assert totals["ok"] == 16 and totals["missing_marker"] == 1 and totals["oracle_error"] == 1


def test_a_stage_alone_for_one_shard_reuses_the_cache_and_leaves_other_shards(home, tagged, oracle):
    run(tagged)
    before = query(home, "SELECT shard, record_id, materialized_at FROM reflect.responses ORDER BY ALL")
    sent = oracle.request_count
    for asset in ALL[1:]:
        run(tagged, keys=[asset], shards=["02"])
    assert oracle.request_count == sent  # zero requests: every reply was cached
    after = query(home, "SELECT shard, record_id, materialized_at FROM reflect.responses ORDER BY ALL")
    assert [row for row in after if row[0] != 2] == [row for row in before if row[0] != 2]
    assert [row for row in after if row[0] == 2] != [row for row in before if row[0] == 2]


def test_an_edited_prompt_is_a_new_version_and_asks_again(home, tagged, oracle, monkeypatch):
    run(tagged, keys=ALL[:2])
    sent = oracle.request_count
    assert query(home, "SELECT DISTINCT prompt_version FROM reflect.instructions") == [("reflect-v1",)]
    monkeypatch.setattr(prompts, "SYSTEM", prompts.SYSTEM + " You are brief.")  # no version bumped by hand
    edited = PAPER_PROFILE.version
    assert edited.startswith("reflect-") and edited != "reflect-v1"
    run(tagged, keys=ALL[1:2])
    assert oracle.request_count - sent == sent  # every phase-1 request (and repair) again
    assert query(home, "SELECT DISTINCT prompt_version FROM reflect.instructions") == [(edited,)]


def test_a_new_model_asks_again_and_switching_back_asks_nothing(home, tagged, oracle, monkeypatch):
    run(tagged, keys=ALL[:2])
    first = oracle.request_count
    monkeypatch.setenv("REFLECTION_ORACLE_MODEL", "gpt-4o")
    run(tagged, keys=ALL[1:2])
    assert oracle.request_count == 2 * first
    assert query(home, "SELECT count(*) FROM reflect.instructions WHERE new_output LIKE '%(gpt-4o)%'") == [(16,)]
    monkeypatch.setenv("REFLECTION_ORACLE_MODEL", "gpt-4o-mini")
    run(tagged, keys=ALL[1:2])
    # every answered request is cached; only the one rejected with HTTP 400 is asked again,
    # since failures are logged, not cached
    assert oracle.request_count == 2 * first + 1
    assert query(home, "SELECT count(*) FROM reflect.instructions WHERE new_output LIKE '%(gpt-4o-mini)%'") == [(16,)]


def test_response_only_and_instruction_only_modes(home, tagged, oracle):
    run(tagged, keys=ALL[:3])  # also_original is on by default
    run(tagged, keys=[ALL[3]], recycled_dataset={"mode": "response"})
    rows = query(home, "SELECT DISTINCT mode, provenance FROM reflect.recycled ORDER BY ALL")
    assert rows == [("response", "response_reflected")]
    assert query(home, "SELECT count(*) FROM reflect.recycled c JOIN raw.records r USING (dataset, record_id) "
                       "WHERE c.instruction <> r.instruction OR c.input <> r.input") == [(0,)]
    run(tagged, keys=[ALL[3]], recycled_dataset={"mode": "instruction"})
    assert {p for (p,) in query(home, "SELECT DISTINCT provenance FROM reflect.recycled")} == {
        "instruction_reflected", "original"
    }


def test_response_only_mode_without_its_variant_says_what_to_run(home, tagged, oracle):
    run(tagged, keys=ALL[:3], reflected_responses={"also_original": False})
    [outcome] = run_record_partitions(
        tagged, defs, JOB_FOR_PARTITIONS[RECORD_PARTITIONS], [ALL[3]], "tagged", ["00"], "WARNING",
        asset_config={"recycled_dataset": {"mode": "response"}},
    )
    assert not outcome.success and "also_original: true" in outcome.error


def test_phase_two_before_phase_one_fails_clearly(home, tagged, oracle):
    run(tagged, keys=ALL[:1])
    [outcome] = run_record_partitions(
        tagged, defs, JOB_FOR_PARTITIONS[RECORD_PARTITIONS], [ALL[2]], "tagged", ["01"], "WARNING"
    )
    assert not outcome.success and "materialize reflected_instructions for this shard first" in outcome.error


def test_repair_can_be_turned_off(home, tagged, oracle):
    run(tagged, keys=ALL[:2], reflected_instructions={"repair": "off"})
    rows = by_instruction(
        home, "SELECT r.instruction, i.outcome, i.repair_key FROM reflect.instructions i JOIN raw.records r USING (dataset, record_id)"
    )
    assert rows["Name a fruit #fixable"] == ("missing_marker", None)
    assert rows["Name a river #truncate"] == ("truncated", None)
    assert rows["Name a tree #echo"] == ("template_echo", None)
