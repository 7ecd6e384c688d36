"""The embedded model answering through the same client, and recycling and judging on its
own defaults (the compact profile): the product's success path with no server at all."""

import json
from collections import Counter

import duckdb
import pytest

from reflection_assets.assets.resources import JudgeResource, OracleResource, StorageResource
from reflection_assets.engines.models.loading import CONVERSION_VERSION, EMBEDDED_NAME
from reflection_assets.engines.benchmark.judge import judge_all
from reflection_assets.engines.benchmark.testsets import TestPrompt
from tests.conftest import REPO, write_json
from tests.integration.test_reflection_assets import ALL
from tests.integration.test_raw_dataset import register


@pytest.mark.slow
def test_the_embedded_model_answers_a_small_batch(home):
    oracle = OracleResource(backend="local", max_tokens=24, batch_size=4)
    client = oracle.client(StorageResource())
    requests = [
        client.request([("user", text)], "v1")
        for text in ("What is the capital of France?", "Name a primary colour.", "Say hello.")
    ]
    replies = {r.request_key: r for r in client.complete_many(requests)}
    assert len(replies) == 3
    for reply in replies.values():
        assert reply.ok and reply.text and reply.finish_reason in ("stop", "length")
        assert reply.prompt_tokens > 5 and 0 < reply.completion_tokens <= 24 and reply.cost_usd == 0
    assert "Paris" in replies[requests[0].key].text
    converted = home / "artifacts" / "models" / f"{EMBEDDED_NAME}-{CONVERSION_VERSION}"
    assert (converted / "model.safetensors").exists()
    assert "quantization_config" not in (converted / "config.json").read_text()
    again = oracle.client(StorageResource())
    assert all(r.cached for r in again.complete_many(requests)) and again.stats.sent == 0


def test_a_conversion_under_way_in_another_process_is_waited_for_and_used(tmp_path):
    """Two processes that need the embedded model at once convert it once: the second waits
    on the lock file beside the folder and then uses the first's folder (without the lock it
    converted too and failed to put its folder in place)."""
    import fcntl
    import subprocess
    import sys
    import time

    target = tmp_path / "models" / f"{EMBEDDED_NAME}-{CONVERSION_VERSION}"
    target.parent.mkdir(parents=True)
    code = "import sys; from reflection_assets.engines.models.loading import embedded_model_dir; print(embedded_model_dir(sys.argv[1]))"
    with open(target.parent / f".{target.name}.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the process converting holds it
        child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        assert child.poll() is None, child.communicate()
        assert not [p for p in target.parent.iterdir() if p.name.startswith(".convert-")]  # not converting
        target.mkdir()
        (target / "config.json").write_text("{}")  # the other process's conversion, in place
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == str(target) and [p.name for p in target.iterdir()] == ["config.json"]


def test_the_converted_embedded_model_answers_what_it_knows(shared_artifacts):
    """The conversion (loading.convert_llama_gguf) maps and de-permutes the GGUF's tensors
    itself: a wrong name or rotary order would still load, then answer nonsense."""
    from reflection_assets.engines.models.loading import shared_causal_lm

    model, tokenizer = shared_causal_lm(EMBEDDED_NAME, shared_artifacts)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_the_conversion_gives_what_transformers_gguf_loader_gives(tmp_path):
    """Weights, config and generation config equal to transformers' own GGUF path
    (from_pretrained with gguf_file, rebuilt from its config, save_pretrained)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from reflection_assets.engines.models.loading import convert_llama_gguf, embedded_gguf

    gguf = embedded_gguf()
    ours = tmp_path / "ours"
    ours.mkdir()
    convert_llama_gguf(gguf, ours)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    config.architectures = ["LlamaForCausalLM"]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    theirs = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    theirs.load_state_dict(loaded.state_dict())
    theirs.generation_config.eos_token_id = config.eos_token_id
    theirs.generation_config.pad_token_id = config.pad_token_id
    theirs.save_pretrained(tmp_path / "theirs")
    for name in ("config.json", "generation_config.json"):
        assert json.loads((ours / name).read_text()) == json.loads((tmp_path / "theirs" / name).read_text()), name
    a, b = load_file(ours / "model.safetensors"), load_file(tmp_path / "theirs" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resources_build_clients_from_the_environment(home, monkeypatch):
    monkeypatch.setenv("REFLECTION_ORACLE_BACKEND", "openai")
    monkeypatch.setenv("REFLECTION_ORACLE_MODEL", "gpt-4o-mini")
    monkeypatch.setenv("REFLECTION_ORACLE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("REFLECTION_ORACLE_API_KEY", "sk-from-env-123456")
    client = OracleResource(max_concurrency=5).client(StorageResource())
    assert client.settings.backend == "openai" and client.settings.max_concurrency == 5
    assert client.settings.api_key == "sk-from-env-123456"
    assert client.fingerprint("v1") == OracleResource().settings().fingerprint("v1")
    assert type(client.backend).__name__ == "OpenAIBackend"


def test_the_embedded_defaults_recycle_and_judge(home, instance, tmp_path, shared_artifacts, monkeypatch, capsys):
    """No oracle settings at all: the local backend, its compact prompts, a dozen real sample
    records through every record-level stage. Most pairs are replaced in each phase (not a
    quality claim: the point is that parsed text comes back), and the local judge gives every
    order two scores from 1 to 10."""
    monkeypatch.setenv("REFLECTION_ARTIFACTS", str(shared_artifacts))
    sample = json.loads((REPO / "reflection_assets" / "data" / "sample_alpaca.json").read_text())[:12]
    register(instance, "smol", write_json(tmp_path / "smol.json", sample))
    # As `reflection run` does it: stage by stage, each reflection stage's requests for the
    # four shards sent ahead together (the embedded model batches across shards).
    from reflection_assets.cli import main

    capsys.readouterr()
    assert main(["run", "--dataset", "smol", "--select", ",".join(k.to_user_string() for k in ALL),
                 "--log-level", "WARNING"]) == 0
    printed = capsys.readouterr()
    assert "12 of 12 runs succeeded" in printed.out  # 4 shards x 3 groups: raw, phase 1, phase 2 on
    assert "embedded oracle: sending ahead what reflected_instructions needs for 4 shard(s)" in printed.err
    with duckdb.connect(str(home / "reflection.duckdb"), read_only=True) as con:
        phase1 = Counter(dict(con.execute("SELECT outcome, count(*) FROM reflect.instructions GROUP BY 1").fetchall()))
        phase2 = Counter(dict(con.execute("SELECT outcome, count(*) FROM reflect.responses GROUP BY 1").fetchall()))
        answered = con.execute(
            "SELECT count(*) FROM reflect.instructions WHERE outcome = 'ok' AND answer_key IS NOT NULL "
            "AND prompt_version = 'reflect-compact-v1'"
        ).fetchone()[0]
        calls = dict(con.execute("SELECT stage, count(*) FROM lineage.oracle_calls GROUP BY 1").fetchall())
        provenance = Counter(dict(con.execute("SELECT provenance, count(*) FROM reflect.recycled GROUP BY 1").fetchall()))
    print(f"\nembedded model, 12 records: phase 1 {dict(phase1)}, phase 2 {dict(phase2)}")
    assert phase1["ok"] >= 6 and phase2["ok"] >= 6
    assert answered == phase1["ok"]  # each new pair took two calls: the instruction, then its answer
    assert calls["instruction"] == 12 and calls["instruction (answer)"] >= phase1["ok"]
    assert provenance["both"] >= 3

    client = JudgeResource().client(StorageResource())
    assert client.settings.prompt_profile == "compact"
    prompt = TestPrompt("t", "p1", "What is the capital of France?", "geography")
    answers = {"recycled": {prompt.prompt_hash: "The capital of France is Paris."}, "baseline": {prompt.prompt_hash: ""}}
    judgments, results, counts = judge_all(client, {"t": [prompt]}, answers, [("recycled", "baseline")])
    assert [j["status"] for j in judgments] == ["ok", "ok"]
    first, second = judgments
    assert 1 <= first["score_test"] <= 10 and 1 <= first["score_ref"] <= 10
    # Each answer is scored on its own: the two orders see the same two scores.
    assert (first["score_test"], first["score_ref"]) == (second["score_test"], second["score_ref"])
    assert counts["requests"] == 2 and results[0]["outcome"] in ("win", "tie", "lose")
