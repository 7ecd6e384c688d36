"""benchmark_scores through Dagster: real adapters of the embedded student answer a small
test set, and a scripted judge on the fake OpenAI server gives known scores. The judge is
first misconfigured (HTTP 400): the run fails, the generated answers stay. Then the
scripted judge scores every pair, and W/T/L and the winning score must come out of the
method's rule. A third materialization sends nothing and generates nothing."""

import json

import dagster as dg
import duckdb
import pytest

from reflection_assets.definitions import JOB_FOR_PARTITIONS, defs
from reflection_assets.assets.partitions import DATASETS
from reflection_assets.method.judging import Tally
from reflection_assets.headless.runner import run_dataset_partition
from tests.conftest import write_json
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.test_raw_dataset import register
from tests.integration.test_reflection_assets import ROWS as TAGGED
from tests.integration.test_reflection_assets import oracle, run  # noqa: F401 (a fixture)

PROMPTS = [
    "Name a planet.", "Say hello.", "Name a color.", "Count to three.", "Name a fruit.",
    "Name an animal.", "Say goodbye.", "Name a country.",
]
# What the judge thinks of each prompt's pair, by prompt index.
KINDS = ["recycled_better", "baseline_better", "position_bias", "unparsable", "equal",
         "recycled_better_in_one_order", "recycled_better", "baseline_better"]
ADAPTER_SETTINGS = {"max_steps": 4, "learning_rate": 0.02, "batch_size": 4}
BENCH_SETTINGS = {"testsets": ["tiny"], "max_new_tokens": 10}


def _between(text, start, end):
    return text.split(start, 1)[1].split(end, 1)[0].strip()


class ScriptedJudge:
    """Scores by which answer is the recycled adapter's, known once the answers exist."""

    def __init__(self):
        self.recycled: dict[str, str] = {}  # question -> the recycled adapter's answer
        self.baseline: dict[str, str] = {}
        self.broken = True  # until the test fixes the "configuration"
        self.indifferent = False  # then every pair is "5 5"

    def plan(self, body, nth):
        return ("status", 400, "The model `judge-x` does not exist") if self.broken else "ok"

    def respond(self, body):
        user = body["messages"][-1]["content"]
        question = _between(user, "[Question]\n", "\n\n[The Start")
        first = _between(user, "[The Start of Assistant 1's Answer]\n", "[The End of Assistant 1's Answer]")
        second = _between(user, "[The Start of Assistant 2's Answer]\n", "[The End of Assistant 2's Answer]")
        kind = KINDS[PROMPTS.index(question)]
        if self.indifferent:
            return "5 5\nNo difference."
        if kind == "unparsable":
            return "Both answers have merit; I cannot choose."
        if kind == "position_bias":
            return "9 3\nThe first answer seems better."
        if kind == "equal" or first == second:
            return "6 6\nEqually good."
        recycled_first = first == self.recycled[question]
        assert (second if recycled_first else first) == self.baseline[question]
        if kind == "recycled_better_in_one_order":  # equal when shown first, better when second
            return "7 7\nSimilar." if recycled_first else "**Assistant 1: 5, Assistant 2: 8**\nThe second is better."
        good, bad = (8, 4) if kind == "recycled_better" else (3, 7)
        return f"{good} {bad}\nreasons" if recycled_first else f"{bad}/10 {good}/10\nreasons"


def expected_outcome(index, recycled, baseline):
    kind = KINDS[index]
    if kind == "unparsable":
        return "unparsed"
    if recycled == baseline or kind in ("position_bias", "equal"):
        return "tie"
    return "lose" if kind == "baseline_better" else "win"


def query(home, sql, params=()):
    with duckdb.connect(str(home / "reflection.duckdb")) as con:
        return con.execute(sql, list(params)).fetchall()


@pytest.fixture
def judge(monkeypatch):
    script = ScriptedJudge()
    with FakeOpenAI(responder=script.respond, plan=script.plan) as server:
        monkeypatch.setenv("REFLECTION_JUDGE_BACKEND", "openai")
        monkeypatch.setenv("REFLECTION_JUDGE_MODEL", "judge-x")
        monkeypatch.setenv("REFLECTION_JUDGE_BASE_URL", server.base_url)
        monkeypatch.setenv("REFLECTION_JUDGE_API_KEY", "sk-test-judge-key")
        server.script = script
        yield server


def test_benchmark_scores_with_a_scripted_judge(home, instance, oracle, judge, tmp_path, shared_artifacts, monkeypatch, capsys):  # noqa: F811
    from reflection_assets.engines.benchmark.testsets import TestsetRegistry
    from reflection_assets.assets.resources import StorageResource

    monkeypatch.setenv("REFLECTION_ARTIFACTS", str(shared_artifacts))
    register(instance, "tagged", write_json(tmp_path / "tagged.json", TAGGED))
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    TestsetRegistry(StorageResource().db()).add("tiny", str(tiny))
    run(instance)  # the record stages, against the scripted reflection oracle

    keys = [dg.AssetKey(n) for n in ("baseline_adapter", "recycled_adapter", "benchmark_scores")]
    settings = {"baseline_adapter": ADAPTER_SETTINGS, "recycled_adapter": ADAPTER_SETTINGS,
                "benchmark_scores": BENCH_SETTINGS}

    def materialize(select=keys):
        [outcome] = run_dataset_partition(
            instance, defs, JOB_FOR_PARTITIONS[DATASETS], select, "tagged", "WARNING", settings
        )
        return outcome

    # 1. The judge is misconfigured: the run fails with its error, the answers are kept.
    failed = materialize()
    assert not failed.success and "every judge call failed" in failed.error and "does not exist" in failed.error
    assert "sk-test-judge-key" not in failed.error
    answers = query(
        home,
        "SELECT c.variant, a.prompt, a.answer FROM bench.answers a "
        "JOIN training.current_adapters c ON a.model_key = c.adapter_id",
    )
    assert len(answers) == 2 * len(PROMPTS)
    script = judge.script
    for variant, prompt, answer in answers:
        (script.recycled if variant == "recycled" else script.baseline)[prompt] = answer
    distinct = sum(script.recycled[p] != script.baseline[p] for p in PROMPTS)
    assert distinct >= 3, "the two adapters answer alike: the test would not tell the orders apart"

    # 2. The judge works: known scores in, the method's W/T/L and winning score out.
    script.broken = False
    sent_before = judge.request_count
    ok = materialize([dg.AssetKey("benchmark_scores")])
    assert ok.success, ok.error
    outcomes = dict(query(home, "SELECT prompt_id, outcome FROM bench.outcomes"))
    expected = {
        f"p{i}": expected_outcome(i, script.recycled[p], script.baseline[p]) for i, p in enumerate(PROMPTS)
    }
    assert outcomes == expected
    tally = Tally.of(list(expected.values()))
    [(win, tie, lose, unparsed, score)] = query(
        home, "SELECT win, tie, lose, unparsed, winning_score FROM bench.scores WHERE category = 'all'"
    )
    assert (win, tie, lose, unparsed) == (tally.win, tally.tie, tally.lose, tally.unparsed) and unparsed == 1
    assert score == pytest.approx((tally.win - tally.lose) / (len(PROMPTS) - 1) + 1)
    statuses = dict(query(home, "SELECT status, count(*) FROM bench.judgments GROUP BY ALL"))
    assert statuses == {"ok": 2 * len(PROMPTS) - 2, "unparsed": 2}

    md = instance.get_latest_materialization_event(dg.AssetKey("benchmark_scores")).asset_materialization.metadata
    assert md["winning_score"].value == pytest.approx(score)
    assert md["unparsed"].value == 1 and md["answers_generated"].value == 0  # generated in step 1
    assert md["judge_fingerprint"].value and md["judge_model"].value == "judge-x"
    assert set(md["judge_served_by"].value) == {"judge-x"}  # the fake names no other snapshot
    assert "data:image/png;base64," in md["win_tie_lose"].value
    assert ("recycled_vs_baseline", "tiny", "all") in {
        (r.data["comparison"], r.data["testset"], r.data["category"]) for r in md["scores"].records
    }
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("benchmark_scores"), "recycled_beats_baseline")]
    )
    assert check  # evaluated, whatever its verdict
    assert judge.request_count - sent_before <= 2 * len(PROMPTS)

    # Held-out loss: both adapters, on the original and the recycled answers of records
    # neither trained on.
    losses = query(home, "SELECT model, reference, examples, loss FROM bench.heldout_loss ORDER BY ALL")
    trained = {r for (r,) in query(home, "SELECT DISTINCT record_id FROM training.adapter_records")}
    everyone = {r for (r,) in query(home, "SELECT record_id FROM raw.records")}
    assert everyone - trained, "the holdout slice is empty"
    assert {(m, ref) for m, ref, _, _ in losses} == {
        ("baseline", "original"), ("baseline", "recycled"), ("recycled", "original"), ("recycled", "recycled")
    }
    assert all(n == len(everyone - trained) and loss > 0 for _, _, n, loss in losses)

    # Record lineage reaches the adapters a record trained and the benchmark that scored them.
    from reflection_assets.engines.data.lineage import record_lineage

    db = StorageResource().db()
    [chain] = record_lineage(db, sorted(trained)[0])
    assert {m["variant"] for m in chain.models} == {"baseline", "recycled"}
    assert {m["benchmark_run"] for m in chain.models} == {query(home, "SELECT run_id FROM bench.runs")[0][0]}
    assert all(m["is_current"] and m["winning_scores"].startswith("tiny ") for m in chain.models)
    [held] = record_lineage(db, sorted(everyone - trained)[0])
    assert held.models == []

    # The scores for scripts: `reflection scores --json`.
    from reflection_assets.cli import main

    capsys.readouterr()
    assert main(["scores", "--json"]) == 0
    [latest] = json.loads(capsys.readouterr().out)
    [row] = [r for r in latest["scores"] if r["comparison"] == "recycled_vs_baseline"]
    assert (row["win"], row["tie"], row["lose"], row["unparsed"]) == (tally.win, tally.tie, tally.lose, 1)
    assert row["winning_score"] == pytest.approx(score) and row["testset"] == "tiny"
    assert latest["dataset"] and latest["judge_model"] == "judge-x" and len(latest["heldout_loss"]) == 4

    # 3. Re-materializing: no answer generated, no judge request sent.
    sent = judge.request_count
    again = materialize([dg.AssetKey("benchmark_scores")])
    assert again.success, again.error
    assert judge.request_count == sent
    md = instance.get_latest_materialization_event(dg.AssetKey("benchmark_scores")).asset_materialization.metadata
    assert md["answers_generated"].value == 0 and md["oracle/cached"].value == md["oracle/requested"].value
    assert query(home, "SELECT count(*) FROM bench.runs") == [(1,)]

    # 4. Against the base model too: only its answers are generated, only the new pairs
    #    are judged, and the first comparison comes back from the cache unchanged.
    script.indifferent = True
    settings["benchmark_scores"] = {**BENCH_SETTINGS, "compare_base": True}
    with_base = materialize([dg.AssetKey("benchmark_scores")])
    assert with_base.success, with_base.error
    md = instance.get_latest_materialization_event(dg.AssetKey("benchmark_scores")).asset_materialization.metadata
    assert md["answers_generated"].value == len(PROMPTS)
    scores = {
        comparison: (w, t, lose, u)
        for comparison, w, t, lose, u in query(
            home,
            "SELECT comparison, win, tie, lose, unparsed FROM bench.scores "
            "WHERE category = 'all' AND run_id = (SELECT run_id FROM bench.latest)",
        )
    }
    assert scores["recycled_vs_baseline"] == (tally.win, tally.tie, tally.lose, tally.unparsed)
    for comparison in ("recycled_vs_base", "baseline_vs_base"):
        assert scores[comparison] == (0, len(PROMPTS), 0, 0)  # "5 5" in both orders: ties
