"""The student and its adapters: masking, training, reloading, the two assets, bad input."""

import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from reflection_assets.engines.student.adapters import held_out
from reflection_assets.engines.models.loading import EMBEDDED_GGUF, ModelError, embedded_gguf
from reflection_assets.engines.student import trainer
from reflection_assets.method.layouts import render
from reflection_assets.engines.student.training import (
    IGNORE,
    TrainConfig,
    TrainingError,
    batches,
    build_examples,
    encode,
    resolve_template,
)
from tests.integration.test_reflection_assets import oracle  # noqa: F401 (a fixture)

ROWS = [
    (f"id{i}", f"Write a sentence about the number {i}.", "" if i % 2 else f"Use the word 'blue' {i} times.",
     f"The number {i} is {'even' if i % 2 == 0 else 'odd'}, and that is all there is to say about it.")
    for i in range(24)
]


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    gguf = embedded_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=EMBEDDED_GGUF)


@pytest.fixture(scope="session")
def tokenizer_only_model(tmp_path_factory, tokenizer):
    """A model folder with the embedded tokenizer and config but no weights: enough for
    every check that must fail before a model is loaded."""
    from transformers import AutoConfig

    folder = tmp_path_factory.mktemp("tokenizer_only")
    tokenizer.save_pretrained(folder)
    gguf = embedded_gguf()
    AutoConfig.from_pretrained(gguf.parent, gguf_file=EMBEDDED_GGUF).save_pretrained(folder)
    return folder


def test_loss_is_masked_to_the_response(tokenizer):
    example = encode(tokenizer, "chat", "r1", "What is 2+2?", "Four.", max_length=256)
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE)
    assert all(label == IGNORE for label in example.labels[:first])
    assert example.labels[first:] == example.input_ids[first:]
    answer = tokenizer.decode(example.input_ids[first:])
    assert answer.startswith("Four.") and "What is 2+2?" not in answer
    assert "What is 2+2?" in tokenizer.decode(example.input_ids[:first])


def test_vicuna_layout_and_truncation(tokenizer):
    example = encode(tokenizer, "vicuna", "r1", "Say hi.", "Hi there!", max_length=256)
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE)
    assert tokenizer.decode(example.input_ids[:first]) == render("vicuna", "Say hi.")
    # An input joins the official Vicuna way, the one V2's scoring reads (method/layouts.py).
    with_input = encode(tokenizer, "vicuna", "r2", "Say hi.", "Hi there!", max_length=256, input_text="to Ann")
    start = next(i for i, label in enumerate(with_input.labels) if label != IGNORE)
    assert tokenizer.decode(with_input.input_ids[:start]).endswith("USER: Say hi.\nInput:\nto Ann ASSISTANT:")
    assert tokenizer.decode(example.input_ids[first:]).startswith(" Hi there!")
    cut = encode(tokenizer, "vicuna", "r1", "Say hi.", "word " * 200, max_length=64)
    assert cut.truncated and len(cut.input_ids) == 64


def test_examples_without_response_tokens_are_dropped(tokenizer):
    long_prompt = [("r1", "explain " * 300, "", "short answer"), ("r2", "Say hi.", "", "Hi!")]
    kept = build_examples(tokenizer, "chat", long_prompt, max_length=64)
    assert [e.record_id for e in kept] == ["r2"]


def test_batches_group_similar_lengths(tokenizer):
    import random

    examples = build_examples(tokenizer, "chat", ROWS, 256)
    for batch in batches(examples, 4, random.Random(0)):
        lengths = [len(e.input_ids) for e in batch]
        assert max(lengths) - min(lengths) <= 12


def test_a_model_without_chat_template(tokenizer):
    assert resolve_template(tokenizer, "auto") == "chat"

    class Plain:
        chat_template = None

    assert resolve_template(Plain(), "vicuna") == "vicuna"
    for template in ("auto", "chat"):
        with pytest.raises(TrainingError, match="has no chat template and none is configured: set .* 'vicuna'"):
            resolve_template(Plain(), template)


def train_here(config: TrainConfig, artifacts, rows, staging: Path) -> dict:
    """The trainer's work in this process, on a staging folder made as the adapter step makes it."""
    staging.mkdir(parents=True, exist_ok=True)
    trainer.write_rows(staging / trainer.ROWS, rows)
    trainer.TrainSpec(config.as_dict(), str(artifacts), "test / baseline").save(staging)
    return trainer.run_training(staging, log=lambda line: None)


def test_bad_input_fails_before_a_model_loads(tmp_path, tokenizer_only_model):
    with pytest.raises(ModelError, match="no such model folder"):
        train_here(TrainConfig(base_model=str(tmp_path / "missing")), tmp_path, ROWS, tmp_path / "out")
    with pytest.raises(TrainingError, match="training set is empty"):
        train_here(TrainConfig(base_model=str(tokenizer_only_model)), tmp_path, [], tmp_path / "out")
    too_long = [("r", "word " * 400, "", "answer")]
    with pytest.raises(TrainingError, match="every example is longer than max_length=32"):
        train_here(TrainConfig(base_model=str(tokenizer_only_model), max_length=32), tmp_path, too_long, tmp_path / "out")
    plain = tmp_path / "plain"
    shutil.copytree(tokenizer_only_model, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((plain / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(settings))
    with pytest.raises(TrainingError, match="no chat template and none is configured"):
        train_here(TrainConfig(base_model=str(plain)), tmp_path, ROWS, tmp_path / "out")
    assert not (tmp_path / "out" / trainer.MODEL).exists()


def test_more_processes_than_gpus_are_refused_before_launch(monkeypatch):
    """NCCL refuses two ranks on one GPU ("invalid usage", on an H200): the settings say so
    first. Without CUDA, several processes share the CPUs over gloo, as the trainer tests run."""
    from reflection_assets.engines.student.training import check_config

    two = TrainConfig(launcher="torchrun", processes=2, batch_size=4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(TrainingError, match=r"processes=2, but this host has 1 GPU \(CUDA_VISIBLE_DEVICES=3\): "
                                            r"each training process takes a GPU of its own. Set processes to at most 1"):
        check_config(two, gpus=1)
    check_config(two, gpus=2)
    check_config(two, gpus=0)
    with pytest.raises(TrainingError, match="needs CUDA"):
        check_config(TrainConfig(method="qlora"), gpus=0)
    check_config(TrainConfig(method="qlora"), gpus=1)


@pytest.mark.slow
def test_training_lowers_the_loss_and_the_adapter_reloads(shared_artifacts, tmp_path):
    from peft import PeftModel

    from reflection_assets.engines.models.loading import load_causal_lm, load_tokenizer
    from reflection_assets.engines.student.training import mean_loss

    config = TrainConfig(max_steps=12, learning_rate=2e-3, batch_size=4, eval_fraction=0.0, precision="float32")
    tokenizer = load_tokenizer(config.base_model, shared_artifacts)
    examples = build_examples(tokenizer, "chat", ROWS, config.max_length)
    base, _ = load_causal_lm(config.base_model, shared_artifacts)
    before = mean_loss(base, examples, tokenizer.pad_token_id, 8, "float32")
    result = train_here(config, shared_artifacts, ROWS, tmp_path)
    assert result["steps"] == 12 and len(result["train_losses"]) == 12
    reloaded = PeftModel.from_pretrained(base, tmp_path / trainer.MODEL).eval()
    after = mean_loss(reloaded, examples, tokenizer.pad_token_id, 8, "float32")
    assert after < before - 0.1, (before, after)


@pytest.mark.slow
def test_the_adapter_assets_through_dagster(home, instance, oracle, tmp_path, shared_artifacts, monkeypatch):  # noqa: F811
    from reflection_assets.definitions import JOB_FOR_PARTITIONS, defs
    from reflection_assets.assets.partitions import DATASETS
    from reflection_assets.headless.runner import run_dataset_partition
    from tests.integration.test_reflection_assets import run
    from tests.integration.test_raw_dataset import register
    from tests.conftest import write_json
    from tests.integration.test_reflection_assets import ROWS as TAGGED

    monkeypatch.setenv("REFLECTION_ARTIFACTS", str(shared_artifacts))
    register(instance, "tagged", write_json(tmp_path / "tagged.json", TAGGED))
    run(instance)
    adapters = [dg.AssetKey("baseline_adapter"), dg.AssetKey("recycled_adapter")]
    settings = {name: {"max_steps": 2} for name in ("baseline_adapter", "recycled_adapter")}

    def train():
        [outcome] = run_dataset_partition(
            instance, defs, JOB_FOR_PARTITIONS[DATASETS], adapters, "tagged", "WARNING", settings
        )
        assert outcome.success, outcome.error
        return {
            key.to_user_string(): instance.get_latest_materialization_event(key).asset_materialization.metadata
            for key in adapters
        }

    first = train()
    with duckdb.connect(str(home / "reflection.duckdb")) as con:
        registry = con.execute("SELECT variant, path, steps, records FROM training.adapters ORDER BY variant").fetchall()
        linked = con.execute("SELECT count(*) FROM training.adapter_records").fetchone()[0]
    with duckdb.connect(str(home / "reflection.duckdb")) as con:
        ids = [r for (r,) in con.execute("SELECT record_id FROM raw.records").fetchall()]
    trained = sum(not held_out(r, 0.1) for r in ids)  # the holdout slice stays out of both
    assert 0 < trained < len(ids) == 18
    assert [(v, s, r) for v, _, s, r in registry] == [("baseline", 2, trained), ("recycled", 2, trained)]
    assert linked == 2 * trained
    for _, path, _, _ in registry:
        config = json.loads((Path(path) / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and (Path(path) / "adapter_model.safetensors").exists()
    md = first["recycled_adapter"]
    assert md["reused"].value is False and "data:image/png;base64," in md["loss_curve"].value
    again = train()
    assert again["baseline_adapter"]["reused"].value is True  # same data, same config: no retraining
    assert again["baseline_adapter"]["adapter_id"].value == first["baseline_adapter"]["adapter_id"].value

    # The adapter registry is in the ledger too: a rebuilt store has it, every column as it was.
    from reflection_assets.engines.store.recovery import rebuild
    from reflection_assets.engines.store.storage import Database

    tables = ("training.adapters", "training.adapter_records", "training.current_adapters")

    def registry_rows():
        with duckdb.connect(str(home / "reflection.duckdb"), read_only=True) as con:
            return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=str) for t in tables}

    before = registry_rows()
    assert len(before["training.current_adapters"]) == 2
    restored = rebuild(Database(home / "reflection.duckdb"))
    assert restored.restored["training.adapter_records"] == 2 * trained
    assert registry_rows() == before



def test_models_load_without_the_hubs_kernels(tiny_student, shared_artifacts):
    """transformers turns hub kernels on by default, which a GPU's first train() then fetches
    from the hub (an H200 without the hub failed there); the package's models never use them."""
    from reflection_assets.engines.models.loading import load_causal_lm

    model, _ = load_causal_lm(str(tiny_student), shared_artifacts)
    assert model.use_kernels is False
