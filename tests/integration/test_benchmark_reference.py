"""The reference comparison: a test set in AlpacaEval's layout (instruction, output,
generator) carries reference answers, and benchmark_scores judges every adapter against
them in both orders (`*_vs_reference`), with the win rate and its interval beside the
winning score. The judge is scripted: it prefers the reference on some prompts, the model
on others; the student is the two-layer test model.

Then the answers come from a server (REFLECTION_ANSWERS_BACKEND=openai, a scripted
OpenAI-compatible server): each adapter is asked by its adapter id, the stored answers
name the backend, and a re-run sends nothing."""

import json
from pathlib import Path

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

# instruction -> (reference answer, what the judge prefers: "model", "reference" or "equal")
EVAL = {
    "Name a planet.": ("Mars is a planet.", "model"),
    "Say hello.": ("Hello there!", "model"),
    "Name a color.": ("Blue.", "reference"),
    "Count to three.": ("1, 2, 3.", "reference"),
    "Name a fruit.": ("An apple.", "reference"),
    "Name a country.": ("France.", "equal"),
}


def _between(text, start, end):
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def respond(body: dict) -> str:
    user = body["messages"][-1]["content"]
    question = _between(user, "[Question]\n", "\n\n[The Start")
    first = _between(user, "[The Start of Assistant 1's Answer]\n", "[The End of Assistant 1's Answer]")
    second = _between(user, "[The Start of Assistant 2's Answer]\n", "[The End of Assistant 2's Answer]")
    reference, preferred = EVAL[question]
    if reference not in (first, second) or preferred == "equal":
        return "5 5\nAlike."  # adapter against adapter, or an even pair
    reference_first = first == reference
    good, bad = (8, 3)
    model_wins = preferred == "model"
    if reference_first:
        return f"{bad} {good}\nThe second." if model_wins else f"{good} {bad}\nThe first."
    return f"{good} {bad}\nThe first." if model_wins else f"{bad} {good}\nThe second."


def test_adapters_are_judged_against_the_reference_answers(home, instance, oracle, tmp_path, shared_artifacts,  # noqa: F811
                                                            tiny_student, monkeypatch, capsys):
    from reflection_assets.assets.resources import StorageResource
    from reflection_assets.cli import main
    from reflection_assets.engines.benchmark.testsets import TestsetRegistry

    monkeypatch.setenv("REFLECTION_ARTIFACTS", str(shared_artifacts))
    register(instance, "tagged", write_json(tmp_path / "tagged.json", TAGGED))
    rows = [{"instruction": q, "output": ref, "generator": "gpt4", "dataset": "helpful_base"}
            for q, (ref, _) in EVAL.items()]
    TestsetRegistry(StorageResource().db()).add("ae", str(write_json(tmp_path / "alpaca_eval.json", rows)))
    run(instance)  # the record stages, against the scripted reflection oracle
    adapter = {"max_steps": 2, "batch_size": 4, "base_model": str(tiny_student), "save_steps": 0}
    settings = {"baseline_adapter": adapter, "recycled_adapter": adapter,
                "benchmark_scores": {"testsets": ["ae"], "max_new_tokens": 6}}
    judge_server = FakeOpenAI(responder=respond).__enter__()
    for name, value in {"BACKEND": "openai", "MODEL": "judge-x", "BASE_URL": judge_server.base_url,
                        "API_KEY": "sk-test"}.items():
        monkeypatch.setenv(f"REFLECTION_JUDGE_{name}", value)

    def materialize(names=("baseline_adapter", "recycled_adapter", "benchmark_scores")):
        [outcome] = run_dataset_partition(instance, defs, JOB_FOR_PARTITIONS[DATASETS],
                                          [dg.AssetKey(n) for n in names], "tagged", "WARNING", settings)
        assert outcome.success, outcome.error

    try:
        materialize()
        check_the_reference_comparison(home, instance, capsys)
        answers_from_a_server(home, instance, monkeypatch, capsys, materialize, judge_server)
    finally:
        judge_server.__exit__(None, None, None)


def check_the_reference_comparison(home, instance, capsys):
    from reflection_assets.cli import main

    with duckdb.connect(str(home / "reflection.duckdb")) as con:
        scores = {c: rest for c, *rest in con.execute(
            "SELECT comparison, win, tie, lose, win_rate, win_rate_low, win_rate_high, winning_score, "
            "winning_score_low, winning_score_high, p_value FROM bench.scores WHERE category = 'all'"
        ).fetchall()}
    assert set(scores) == {"recycled_vs_baseline", "baseline_vs_reference", "recycled_vs_reference"}
    expected = Tally(win=2, tie=1, lose=3)  # the script: the model wins 2, ties 1, loses 3
    for comparison in ("baseline_vs_reference", "recycled_vs_reference"):
        win, tie, lose, rate, rate_low, rate_high, score, low, high, p_value = scores[comparison]
        assert (win, tie, lose) == (expected.win, expected.tie, expected.lose)
        assert rate == pytest.approx(2.5 / 6) and rate_low <= rate <= rate_high
        assert score == pytest.approx(expected.winning_score) and low <= score <= high
        assert p_value == pytest.approx(1.0)  # 2 against 3: nowhere near significant
    md = instance.get_latest_materialization_event(dg.AssetKey("benchmark_scores")).asset_materialization.metadata
    assert md["recycled_vs_reference_win_rate"].value.startswith("0.417 [")
    assert {(r.data["comparison"], r.data["testset"], r.data["category"]) for r in md["scores"].records} >= {
        ("baseline_vs_reference", "ae", "all")
    }

    capsys.readouterr()
    assert main(["scores", "--json"]) == 0
    [latest] = json.loads(capsys.readouterr().out)
    [row] = [r for r in latest["scores"] if r["comparison"] == "recycled_vs_reference"]
    assert row["win_rate"] == pytest.approx(2.5 / 6) and len(row["win_rate_ci"]) == 2
    assert len(row["winning_score_ci"]) == 2 and row["p_value"] == pytest.approx(1.0)
    assert main(["scores"]) == 0
    printed = capsys.readouterr().out
    assert "recycled_vs_reference" in printed and "win rate 0.417 [" in printed
    assert "recycled_vs_baseline (ae): no significant difference on 6 prompts" in printed


def answers_from_a_server(home, instance, monkeypatch, capsys, materialize, judge_server):
    from reflection_assets.cli import main

    asked: list[str] = []

    def answer(body: dict) -> str:
        asked.append(body["model"])
        assert body["temperature"] == 0 and body["max_tokens"] == 6  # greedy, the local max_new_tokens
        return f"{body['model'][:6]} says: {body['messages'][-1]['content']}"

    with FakeOpenAI(responder=answer) as server:
        monkeypatch.setenv("REFLECTION_ANSWERS_BACKEND", "openai")
        monkeypatch.setenv("REFLECTION_ANSWERS_BASE_URL", server.base_url)
        monkeypatch.setenv("REFLECTION_ANSWERS_API_KEY", "sk-answers-secret")
        materialize(["benchmark_scores"])
        with duckdb.connect(str(home / "reflection.duckdb")) as con:
            current = dict(con.execute("SELECT variant, adapter_id FROM training.current_adapters").fetchall())
            served = con.execute(
                "SELECT model_key, count(*) FROM bench.answers WHERE backend = 'openai' GROUP BY 1 ORDER BY 1"
            ).fetchall()
            answer = con.execute(
                "SELECT answer FROM bench.answers WHERE backend = 'openai' AND model_key = ? LIMIT 1",
                [current["recycled"]],
            ).fetchone()[0]
            secrets = con.execute("SELECT count(*) FROM oracle.replies WHERE request_json LIKE '%sk-answers%'").fetchone()
        # Each adapter was requested as the model named by its adapter id, once per prompt.
        assert sorted(asked) == sorted([current["baseline"]] * len(EVAL) + [current["recycled"]] * len(EVAL))
        assert served == sorted([(current["baseline"], len(EVAL)), (current["recycled"], len(EVAL))])
        assert answer.startswith(current["recycled"][:6] + " says: ")
        assert secrets == (0,)
        md = instance.get_latest_materialization_event(dg.AssetKey("benchmark_scores")).asset_materialization.metadata
        assert md["answers_backend"].value == "openai" and md["answers_generated"].value == 2 * len(EVAL)

        # A re-run asks the server nothing, and the judge nothing new.
        sent, judged = server.request_count, judge_server.request_count
        materialize(["benchmark_scores"])
        assert server.request_count == sent and judge_server.request_count == judged

    capsys.readouterr()
    assert main(["adapters", "--dataset", "tagged", "--serve-args"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[:5] == ["--enable-lora", "--max-lora-rank", "8", "--max-loras", "2"]
    modules = printed[printed.index("--lora-modules") + 1:]
    assert sorted(m.split("=", 1)[0] for m in modules) == sorted(current.values())
    assert all(Path(m.split("=", 1)[1], "adapter_config.json").exists() for m in modules)
