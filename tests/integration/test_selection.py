"""Selective recycling (V2): the embedded student's scores against a straightforward
one-sequence-at-a-time computation, and the statuses; then the assets through Dagster
against the scripted reflection oracle, with the two-layer test student (tests/conftest.py,
tiny_student): they compute the scores with the same code, and with the 135M model the
Dagster test took 62 s in a fresh clone's `make test`, against 17 s with the test student."""

import json
import math

import dagster as dg
import duckdb
import pytest

from reflection_assets.definitions import JOB_FOR_PARTITIONS, RECORD_PARTITIONS, defs
from reflection_assets.engines.selection.ifd import Pair, StudentScorer
from reflection_assets.method.selection import fill, instruction_span, reverse_instruction
from reflection_assets.headless.runner import run_record_partitions
from tests.conftest import REPO, write_json
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.reflection_oracle import plan, respond
from tests.integration.test_raw_dataset import register

SAMPLE = json.loads((REPO / "reflection_assets/data/sample_alpaca.json").read_text())[:5]


@pytest.fixture(scope="module")
def scorer(shared_artifacts):
    return StudentScorer(
        "SmolLM2-135M-Instruct", shared_artifacts, "vicuna", max_length=160, dtype="float32",
        batch_size=4, log=lambda _: None,
    )


def reference_losses(scorer, pair, max_length):
    """The official definition, one sequence at a time with transformers' own loss: the
    prompt and the span tokenized apart, the span cut to what fits, labels on the span."""
    import torch

    tok, model = scorer.tokenizer(), scorer.model()

    def conditional(prompt, span):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        s = tok(span, add_special_tokens=False)["input_ids"][: max_length - len(p)]
        ids = torch.tensor([p + s])
        labels = torch.tensor([[-100] * len(p) + s])
        with torch.no_grad():
            return model(ids, labels=labels).loss.item(), s

    def alone(span_ids):
        ids = torch.tensor([span_ids])
        with torch.no_grad():
            return model(ids, labels=ids).loss.item()

    out_c, out_ids = conditional(fill("vicuna", pair.instruction, pair.input), pair.output)
    span = instruction_span(pair.instruction, pair.input)
    ins_c, ins_ids = conditional(fill("vicuna", reverse_instruction(pair.output), ""), span)
    return [out_c, alone(out_ids), ins_c, alone(ins_ids)]


def test_scores_match_a_reference_computation_and_failures_have_a_status(scorer, monkeypatch):
    assert scorer.specials() == ([], [])  # SmolLM2's tokenizer adds no BOS: the alone spans start unpredicted
    pairs = [Pair(r["instruction"], r.get("input", ""), r["output"]) for r in SAMPLE]
    # Each prompt fits in max_length, the span after it does not: cut to what fits.
    long_output = Pair(
        "Summarize: " + " ".join(["A cat sat on the warm mat by the door."] * 7), "",
        " ".join(["The quick brown fox jumps over the lazy dog."] * 8),
    )
    long_prompt = Pair("Explain " + "very " * 200 + "carefully.", "", "Done.")
    empty = Pair("Say nothing.", "", "   ")
    broken = Pair("Name a planet.", "", "Mars, the fourth planet ZZZBROKEN.")
    results = None

    # A fault we cannot cause for real on demand: the model fails on one sequence (as an
    # out-of-memory error would); only that pair is model_error, its batch-mates are scored.
    model = scorer.model()
    decoder = model.get_decoder()
    original_forward = decoder.forward

    def failing_forward(*args, input_ids=None, **kwargs):
        if any("ZZZBROKEN" in scorer.tokenizer().decode(row) for row in input_ids.tolist()):
            raise RuntimeError("CUDA out of memory (simulated)")
        return original_forward(*args, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(decoder, "forward", failing_forward)
    results = scorer.score([*pairs, long_output, long_prompt, empty, broken])
    monkeypatch.undo()

    *ok, too_long_output, too_long_prompt, empty_result, broken_result = results
    for pair, result in zip([*pairs, long_output], [*ok, too_long_output], strict=True):
        assert result.status == "ok", result.reason
        ours = [result.losses.loss_output_condition, result.losses.loss_output_alone,
                result.losses.loss_instruction_condition, result.losses.loss_instruction_alone]
        assert ours == pytest.approx(reference_losses(scorer, pair, 160), rel=1e-4)
        assert result.losses.ifd == pytest.approx(math.exp(ours[0]) / math.exp(ours[1]))
    assert too_long_output.truncated and not ok[0].truncated  # cut to fit, both of its forms alike
    assert (too_long_prompt.status, too_long_prompt.losses) == ("too_long", None)
    assert "max_length 160" in too_long_prompt.reason
    assert (empty_result.status, empty_result.losses) == ("empty_output", None)
    assert broken_result.status == "model_error" and "out of memory" in broken_result.reason
    # the same pairs again, without the fault: the broken one scores
    assert scorer.score([broken])[0].status == "ok"


# ------------------------------------------------------------------ through Dagster

V2 = [dg.AssetKey(n) for n in ("raw_dataset", "reflected_instructions", "reflected_responses", "student_scores", "selective_dataset")]
ROWS = [
    {"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}
    for r in json.loads((REPO / "reflection_assets/data/sample_alpaca.json").read_text())[:10]
] + [{"instruction": "Name a color #missing", "output": "Red"}]


@pytest.fixture
def v2(home, instance, tmp_path, shared_artifacts, tiny_student, monkeypatch):
    with FakeOpenAI(responder=respond, plan=plan) as server:
        monkeypatch.setenv("REFLECTION_STUDENT_MODEL", str(tiny_student))
        monkeypatch.setenv("REFLECTION_ORACLE_BACKEND", "openai")
        monkeypatch.setenv("REFLECTION_ORACLE_MODEL", "gpt-4o-mini")
        monkeypatch.setenv("REFLECTION_ORACLE_BASE_URL", server.base_url)
        monkeypatch.setenv("REFLECTION_ORACLE_API_KEY", "sk-test")
        monkeypatch.setenv("REFLECTION_ARTIFACTS", str(shared_artifacts))
        monkeypatch.setenv("REFLECTION_STUDENT_MAX_LENGTH", "384")
        monkeypatch.setenv("REFLECTION_STUDENT_DTYPE", "float32")
        register(instance, "v2", write_json(tmp_path / "v2.json", ROWS))
        yield instance


def run(instance, keys, shards=None, **config):
    return run_record_partitions(
        instance, defs, JOB_FOR_PARTITIONS[RECORD_PARTITIONS], keys, "v2", shards, "WARNING", asset_config=config or None
    )


def query(home, sql, params=()):
    with duckdb.connect(str(home / "reflection.duckdb")) as con:
        return con.execute(sql, list(params)).fetchall()


def test_student_scores_and_selective_dataset(home, v2, tmp_path, capsys, monkeypatch, shared_artifacts, tiny_student):
    from reflection_assets.cli import main

    outcomes = run(v2, V2)
    assert all(o.success for o in outcomes), [o.error for o in outcomes]
    # every record has its four variants, each ok or with a reason
    per_variant = dict(query(home, "SELECT variant, count(*) FROM selection.student_scores GROUP BY ALL"))
    assert per_variant == {v: len(ROWS) for v in ("original", "instruction", "response", "both")}
    # phase 1 failed on the #missing record: its 'instruction' variant is the original pair
    assert query(home, "SELECT count(DISTINCT score_key) FROM selection.student_scores s JOIN raw.records r "
                       "USING (dataset, record_id) WHERE r.instruction LIKE '%#missing' AND s.variant IN ('original', 'instruction')") == [(1,)]
    assert query(home, "SELECT count(*) FROM selection.student_scores WHERE status = 'ok' AND (ifd <= 0 OR r_ifd <= 0)") == [(0,)]
    # every record has a decision; the kept rows are exactly the decisions that keep one
    decisions = query(home, "SELECT record_id, kept FROM selection.decisions ORDER BY 1")
    assert len(decisions) == len(ROWS)
    kept = {rid: kind for rid, kind in decisions if kind}
    selected = dict(query(home, "SELECT record_id, kind FROM selection.selective"))
    assert selected == kept
    assert query(home, "SELECT count(*) FROM selection.selective s JOIN selection.student_scores c "
                       "ON c.record_id = s.record_id AND c.variant = s.kind WHERE c.ifd >= 1 OR c.r_ifd >= 1") == [(0,)]
    md = v2.get_latest_materialization_event(dg.AssetKey("student_scores")).asset_materialization.metadata
    assert {"distribution", "means", "statuses", "scored_now"} <= set(md)
    from reflection_assets.assets.resources import StorageResource
    from reflection_assets.engines.data.lineage import recycling_summary

    [chosen] = recycling_summary(StorageResource().db(), "v2")  # what `reflection run` ends with (no recycled_dataset here)
    both = sum(k == "both" for k in kept.values())
    assert chosen == (f"  v2 selected by the student (V2): {len(kept)} of {len(ROWS)} records "
                      f"({both} both phases, {len(kept) - both} answer only)")

    # re-materializing with nothing changed computes nothing
    shard = query(home, "SELECT any_value(shard) FROM raw.records")[0][0]
    again = run(v2, [dg.AssetKey("student_scores")], shards=[f"{shard:02d}"])
    assert again[0].success
    md = v2.get_latest_materialization_event(dg.AssetKey("student_scores")).asset_materialization.metadata
    assert md["scored_now"].value == 0 and md["from_cache"].value > 0

    # inspection
    out = tmp_path / "scores.jsonl"
    assert main(["export", "v2", "--stage", "scores", "--format", "jsonl", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 * len(ROWS)
    assert set(lines[0]) == {"record_id", "variant", "instruction", "input", "output", "ppl_output_condition",
                             "ppl_output_alone", "ppl_instruction_condition", "ppl_instruction_alone", "ifd",
                             "r_ifd", "status", "reason", "selected"}
    assert sum(line["selected"] for line in lines) == len(selected)
    # The test student is untrained (its scores are all near 1): which rows pass is chance,
    # but fixed by its seed; some do, so the selected set and its exports are not empty.
    assert selected, "some rows pass the rule: the selected set is not empty"
    alpaca = tmp_path / "selective.json"
    assert main(["export", "v2", "--stage", "selective", "--format", "alpaca", "--out", str(alpaca)]) == 0
    assert len(json.loads(alpaca.read_text())) == len(selected)
    assert "v2_selective" in json.loads((tmp_path / "dataset_info.json").read_text())
    record = decisions[0][0]
    capsys.readouterr()
    assert main(["lineage", record]) == 0
    printed = capsys.readouterr().out
    assert "student scores (selective recycling):" in printed and "selective: " in printed

    # the selective adapter trains on the kept rows and names the model that selected them
    from reflection_assets.definitions import DATASETS
    from reflection_assets.engines.models.loading import model_identity
    from reflection_assets.headless.runner import run_dataset_partition

    [trained] = run_dataset_partition(
        v2, defs, JOB_FOR_PARTITIONS[DATASETS], [dg.AssetKey("selective_adapter")], "v2", "WARNING",
        {"selective_adapter": {"max_steps": 1, "batch_size": 2, "max_length": 96, "holdout_fraction": 0.0}},
    )
    assert trained.success, trained.error
    md = v2.get_latest_materialization_event(dg.AssetKey("selective_adapter")).asset_materialization.metadata
    assert md["records"].value == len(selected)
    assert md["selected_by"].value == model_identity(str(tiny_student), shared_artifacts)

    # a new template is a new student: once observed, every scored shard is stale
    from reflection_assets.headless.runner import observe
    from reflection_assets.headless.status import asset_statuses, unobserved_changes

    monkeypatch.setenv("REFLECTION_STUDENT_TEMPLATE", "alpaca")
    statuses = asset_statuses(v2, defs, "v2", [dg.AssetKey("student_scores")])
    [change] = [c for c in unobserved_changes(v2, statuses) if c.source == "student"]
    assert (change.asset, change.affected) == ("student_scores", statuses[0].materialized)  # `reflection status` says so
    observe(v2, defs)
    [status] = asset_statuses(v2, defs, "v2", [dg.AssetKey("student_scores")])
    assert status.reasons() == {"student changed": status.materialized}
    monkeypatch.setenv("REFLECTION_STUDENT_TEMPLATE", "vicuna")
    observe(v2, defs)
    [status] = asset_statuses(v2, defs, "v2", [dg.AssetKey("student_scores")])
    assert not status.stale

    # top_k keeps the highest-IFD share of what the rule selected, within each shard
    assert all(o.success for o in run(v2, [dg.AssetKey("selective_dataset")], selective_dataset={"top_k": 0.01}))
    cut = query(home, "SELECT count(*) FILTER (WHERE cut_by_top_k), count(*) FILTER (WHERE kept IS NOT NULL) FROM selection.decisions")[0]
    shards_with_kept = query(home, "SELECT count(DISTINCT shard) FROM selection.decisions WHERE kept IS NOT NULL")[0][0]
    assert query(home, "SELECT count(*) FROM selection.selective")[0][0] == shards_with_kept == cut[1] - cut[0]


def test_student_scores_asks_for_the_original_variant(home, v2):
    run(v2, V2[:3], reflected_responses={"also_original": False})
    outcomes = run(v2, [dg.AssetKey("student_scores")], shards=["00"])
    assert not outcomes[0].success
    assert "also_original: true" in outcomes[0].error and "reflected_responses" in outcomes[0].error


def test_a_selection_that_keeps_nothing_trains_no_adapter_and_does_not_block(home, instance, tmp_path):
    from reflection_assets.definitions import DATASETS
    from reflection_assets.headless.runner import run_dataset_partition

    register(instance, "v2", write_json(tmp_path / "v2.json", ROWS))
    with duckdb.connect(str(home / "reflection.duckdb")) as con:
        con.execute("INSERT INTO training.current_adapters (dataset, variant, adapter_id) VALUES ('v2', 'selective', 'old')")
    [outcome] = run_dataset_partition(
        instance, defs, JOB_FOR_PARTITIONS[DATASETS], [dg.AssetKey("selective_adapter")], "v2", "WARNING"
    )
    assert outcome.success, outcome.error
    md = instance.get_latest_materialization_event(dg.AssetKey("selective_adapter")).asset_materialization.metadata
    assert md["reason"].value == "selective_dataset kept no record"
    # the benchmark then compares V1 alone: no selective adapter is current
    assert query(home, "SELECT count(*) FROM training.current_adapters WHERE variant = 'selective'") == [(0,)]
