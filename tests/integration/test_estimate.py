"""`reflection estimate` against the scripted oracle, whose token counts are known (a quarter
of the characters, plus one): a pilot's extrapolation against what the stages then cost,
what the pilot sent, and the bad inputs that send nothing."""

import json

import dagster as dg
import duckdb
import pytest

from reflection_assets.cli import main
from reflection_assets.definitions import JOB_FOR_PARTITIONS, RECORD_PARTITIONS, defs
from reflection_assets.headless.runner import run_record_partitions
from tests.conftest import write_json
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.reflection_oracle import plan, respond
from tests.integration.test_raw_dataset import register

STAGES = [dg.AssetKey(n) for n in ("raw_dataset", "reflected_instructions", "reflected_responses")]


def rows(n: int, verb: str = "Explain") -> list[dict]:
    """Records shaped like Alpaca's: answers of a few words to a paragraph, inputs on a third;
    one in ten fails phase 1's format once and is fixed by the repair call."""
    out = []
    for i in range(n):
        words = 3 + (i * 37) % 90
        out.append({
            "instruction": f"{verb} topic {i} to a newcomer" + (" #fixable" if i % 10 == 3 else "")
            + " in plain words." * (1 + i % 3),
            "input": f"context sentence {i} " * (i % 4) if i % 3 == 0 else "",
            "output": " ".join(f"word{j}" for j in range(words)),
        })
    return out


@pytest.fixture
def oracle(monkeypatch):
    with FakeOpenAI(responder=respond, plan=plan) as server:
        monkeypatch.setenv("REFLECTION_ORACLE_BACKEND", "openai")
        monkeypatch.setenv("REFLECTION_ORACLE_MODEL", "scripted-oracle")
        monkeypatch.setenv("REFLECTION_ORACLE_PRICE_INPUT", "2.5")
        monkeypatch.setenv("REFLECTION_ORACLE_PRICE_OUTPUT", "10")
        monkeypatch.setenv("REFLECTION_ORACLE_BASE_URL", server.base_url)
        monkeypatch.setenv("REFLECTION_ORACLE_API_KEY", "sk-test-estimate")
        yield server


def dataset(instance, tmp_path, n: int, name: str = "big", verb: str = "Explain"):
    register(instance, name, write_json(tmp_path / f"{name}.json", rows(n, verb)))
    outcomes = run_record_partitions(instance, defs, JOB_FOR_PARTITIONS[RECORD_PARTITIONS], STAGES[:1], name, None, "WARNING")
    assert all(o.success for o in outcomes)


def estimate_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["estimate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def spent(home) -> tuple[int, float]:
    with duckdb.connect(str(home / "reflection.duckdb"), read_only=True) as con:
        return con.execute("SELECT count(*), coalesce(sum(cost_usd), 0) FROM oracle.replies").fetchone()


def test_a_20_record_pilot_predicts_what_200_records_cost(home, instance, tmp_path, oracle, capsys):
    dataset(instance, tmp_path, 200)
    cold = estimate_json(capsys, "--dataset", "big")
    assert oracle.request_count == 0  # nothing but the pilot is ever sent
    # with no reply seen: the prompts of the first calls are known; outputs at their limit and
    # every record's repair call asked are the upper bound, and the output says so
    phase1 = cold["stages"][0]
    assert "upper bound" in phase1["output_tokens_basis"] and phase1["hours"] is None
    assert phase1["requests_range"] == [200, 400] and phase1["output_tokens"] == 400 * 2048
    assert phase1["requests_known"] == 200 and phase1["requests_cached"] == 0

    estimate = estimate_json(capsys, "--dataset", "big", "--pilot", "20")
    pilot = estimate["pilot"]
    assert pilot["records"] == 20 and pilot["requests_sent"] == oracle.request_count
    replies, pilot_cost = spent(home)
    assert replies == oracle.request_count  # the pilot's requests, each stored once
    # 20 records: one phase-1 call each (two with a repair) and a phase-2 call for the chain
    # pair and one for the original: about 62, never the dataset's
    assert 55 <= oracle.request_count <= 70
    assert set(estimate) >= {"stages", "total_cost_usd"}
    assert [s["stage"] for s in estimate["stages"]] == ["reflected_instructions", "reflected_responses"]
    for stage in estimate["stages"]:
        assert set(stage) >= {"stage", "requests", "input_tokens", "output_tokens", "cost_usd", "batch_cost_usd", "hours"}
        assert stage["batch_cost_usd"] == pytest.approx(stage["cost_usd"] * 0.5, abs=2e-6)
        assert stage["hours"] is not None and stage["sample_records"] >= 20
        assert "characters a token" in stage["input_tokens_basis"]

    outcomes = run_record_partitions(instance, defs, JOB_FOR_PARTITIONS[RECORD_PARTITIONS], STAGES[1:], "big", None, "WARNING")
    assert all(o.success for o in outcomes)
    replies_after, cost_after = spent(home)
    assert oracle.request_count == replies_after  # nothing the pilot asked was asked again
    actual_requests, actual_cost = replies_after - replies, cost_after - pilot_cost
    predicted_requests = sum(s["requests"] for s in estimate["stages"])
    assert abs(predicted_requests - actual_requests) <= 0.3 * actual_requests, (predicted_requests, actual_requests)
    assert abs(estimate["total_cost_usd"] - actual_cost) <= 0.3 * actual_cost, (estimate["total_cost_usd"], actual_cost)
    # the estimate after the stages ran: nothing left to send
    done = estimate_json(capsys, "--dataset", "big")
    assert [s["requests"] for s in done["stages"]] == [0, 0] and done["total_cost_usd"] == 0

    # another dataset, none of its records seen: what this oracle answered for "big" stands in
    dataset(instance, tmp_path, 50, name="other", verb="Describe")
    other = estimate_json(capsys, "--dataset", "other")
    phase1, phase2 = other["stages"]
    assert "elsewhere" in phase1["output_tokens_basis"] and phase1["sample_records"] == 200
    # 50 first calls and a repair for about one in ten, not the upper bound of 100
    assert 50 <= phase1["requests"] <= 60 and phase1["requests_range"][1] < 70
    assert phase2["requests"] >= 95 and phase2["output_tokens"] < 100 * 200
    assert oracle.request_count == replies_after  # still nothing sent


def test_bad_input_is_a_clear_message_and_sends_nothing(home, instance, tmp_path, oracle, capsys, monkeypatch):
    dataset(instance, tmp_path, 12, name="small")
    capsys.readouterr()
    assert main(["estimate", "--dataset", "small", "--pilot", "13"]) == 2
    assert "--pilot 13: dataset 'small' has 12 records; expected 1 to 12" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["estimate", "--dataset", "small", "--stage", "recycled_dataset"])
    assert "invalid choice: 'recycled_dataset'" in capsys.readouterr().err
    monkeypatch.delenv("REFLECTION_ORACLE_PRICE_INPUT")
    monkeypatch.delenv("REFLECTION_ORACLE_PRICE_OUTPUT")
    assert main(["estimate", "--dataset", "small", "--pilot", "2"]) == 2
    err = capsys.readouterr().err
    assert "no price known for model 'scripted-oracle'" in err and "REFLECTION_ORACLE_PRICE_INPUT" in err
    assert main(["estimate", "--dataset", "nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert oracle.request_count == 0 and not oracle.probes


def test_the_judge_of_benchmark_scores_when_asked(home, instance, tmp_path, oracle, capsys):
    """Before any adapter exists: every comparison the main job judges, both orders, on the
    configured prompts; nothing is sent (the judge falls back to the oracle's settings)."""
    from reflection_assets.engines.benchmark.testsets import BUNDLED_TESTSET, TestsetRegistry
    from reflection_assets.assets.resources import StorageResource

    dataset(instance, tmp_path, 12, name="small")
    prompts = len(TestsetRegistry(StorageResource().db()).load(BUNDLED_TESTSET))
    everything = estimate_json(capsys, "--dataset", "small", "--stage", "benchmark_scores")
    [judge] = everything["stages"]
    # recycled and selective against the baseline, each prompt in both orders
    assert judge["stage"] == "benchmark_scores" and judge["requests"] == 2 * 2 * prompts
    assert judge["requests_known"] == judge["requests"] and judge["input_tokens"] > 0
    config = tmp_path / "bench.yaml"
    config.write_text("benchmark_scores: {max_prompts: 5, compare_base: true}\n")
    cut = estimate_json(capsys, "--dataset", "small", "--stage", "benchmark_scores", "--config", str(config))
    # with the base model: recycled, selective and baseline against it too
    assert cut["stages"][0]["requests"] == 5 * 5 * 2
    config.write_text("benchmark_scores: {max_prompts: many}\n")
    assert main(["estimate", "--dataset", "small", "--stage", "benchmark_scores", "--config", str(config)]) == 2
    assert "max_prompts" in capsys.readouterr().err
    config.write_text("reflected_responses: {also_orignal: false}\n")  # a typo is not taken for the default
    assert main(["estimate", "--dataset", "small", "--config", str(config)]) == 2
    assert "no setting 'also_orignal'; expected one of" in capsys.readouterr().err
    assert oracle.request_count == 0


def test_settings_of_the_stages_change_what_is_counted(home, instance, tmp_path, oracle, capsys):
    dataset(instance, tmp_path, 12, name="small")
    both = estimate_json(capsys, "--dataset", "small", "--stage", "reflected_responses")["stages"][0]
    # before phase 1: the 12 originals are known; the chain pairs wait on phase 1 (with
    # nothing seen, each is taken as a new request: the upper bound), a repair each at most
    assert both["requests_known"] == 12 and both["requests_range"] == [12, 48]
    config = tmp_path / "run.yaml"
    config.write_text("reflected_responses: {also_original: false, repair: 'off'}\n")
    alone = estimate_json(capsys, "--dataset", "small", "--stage", "reflected_responses", "--config", str(config))["stages"][0]
    # one request a record, none known yet, each sized by the original pair's prompt (as are
    # all 48 of the upper bound above)
    assert alone["requests"] == 12 and alone["requests_known"] == 0 and alone["requests_range"] == [12, 12]
    assert alone["input_tokens"] == pytest.approx(both["input_tokens"] / 4, rel=0.01)
    assert oracle.request_count == 0
