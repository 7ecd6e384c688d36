"""The trainer in a process of its own: transformers' Trainer, launched by the adapter step
through Dagster Pipes. Several processes under torchrun on CPU (gloo) train what one does; a
training killed with SIGKILL resumes from its last checkpoint; `method: full` leaves a model
folder the benchmark answers with; `method: qlora` is refused without CUDA. Every run goes
through the `reflection` command, as a user runs it. The student is the two-layer
Llama-shaped test model (the full method, the embedded model)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from reflection_assets.engines.student.adapters import adapter_id_for, data_fingerprint, held_out
from reflection_assets.engines.student.training import TrainConfig
from tests.conftest import REPO, alpaca_rows

BIN = os.path.dirname(sys.executable)
ROWS = alpaca_rows(40, seed="t")


def reflection(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "reflection"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


@pytest.fixture
def env(tmp_path, shared_artifacts, raw_home):
    """A home with dataset `t` registered and its raw_dataset materialized (what the
    baseline adapter trains on: no oracle needed), a copy of one made once."""
    home = raw_home(tmp_path / "home", "t", ROWS, int(os.environ["REFLECTION_SHARDS"]))
    env = dict(os.environ, DAGSTER_HOME=str(home), REFLECTION_ARTIFACTS=str(shared_artifacts))
    env.pop("REFLECTION_DUCKDB", None)
    return env


def train_command(env: dict, tmp_path: Path, settings: dict) -> list[str]:
    config = tmp_path / f"train-{time.monotonic_ns()}.yaml"
    config.write_text(yaml.safe_dump({"baseline_adapter": settings}))
    return [os.path.join(BIN, "reflection"), "run", "--dataset", "t", "--select", "baseline_adapter",
            "--config", str(config)]


def train(env: dict, tmp_path: Path, settings: dict) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(env, tmp_path, settings), capture_output=True, text=True, env=env,
                          timeout=600, cwd=REPO)


def current_adapter(env: dict) -> dict:
    listed = reflection("adapters", "--dataset", "t", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    [adapter] = [a for a in json.loads(listed.stdout) if a["variant"] == "baseline"]
    return adapter


def training_log(adapter: dict) -> dict:
    return json.loads((Path(adapter["path"]) / "training_log.json").read_text())


def test_two_processes_train_what_one_does(env, tmp_path, tiny_student):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # No dropout: the two runs then differ only in how the gradients are summed.
    recipe = {"base_model": str(tiny_student), "max_steps": 6, "batch_size": 4, "grad_accumulation": 2,
              "learning_rate": 5e-3, "lora_dropout": 0.0, "save_steps": 0}
    two = train(env, tmp_path, {**recipe, "launcher": "torchrun", "processes": 2})
    assert two.returncode == 0, two.stdout + two.stderr
    adapter = current_adapter(env)
    assert (adapter["world_size"], adapter["method"], adapter["steps"]) == (2, "lora", 6)
    log = training_log(adapter)
    # 6 steps x 2 passes x 4 examples: each process collated half of every global batch.
    assert log["examples_per_process"] == [24, 24]
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_student), adapter["path"])
    assert any("lora_A" in name for name, _ in reloaded.named_parameters())

    one = train(env, tmp_path, recipe)
    assert one.returncode == 0, one.stdout + one.stderr
    single = current_adapter(env)
    assert single["world_size"] == 1 and single["adapter_id"] != adapter["adapter_id"]
    assert training_log(single)["examples_per_process"] == [48]
    # The same examples make each global batch in both runs, from the same initial weights;
    # gloo sums the two halves' gradients in another order than one process sums its batch,
    # which moves the loss by about 1e-6. 1e-3 allows for that and for its growth over 6
    # steps at a high learning rate; a batch split wrongly (other examples, or each process
    # taking a whole batch) changes the loss of step 2 onwards by 1e-2 or more.
    two_losses, one_losses = log["train_losses"], training_log(single)["train_losses"]
    assert len(two_losses) == len(one_losses) == 6
    assert max(abs(a - b) for a, b in zip(two_losses, one_losses, strict=True)) < 1e-3, (two_losses, one_losses)
    assert one_losses[-1] < one_losses[0]

    listed = reflection("adapters", "--dataset", "t", "--all", env=env)
    assert listed.stdout.count("t / baseline") == 2 and "2 processes" in listed.stdout

    qlora = train(env, tmp_path, {**recipe, "method": "qlora"})
    assert qlora.returncode != 0
    assert "needs CUDA" in qlora.stdout + qlora.stderr and "Traceback" not in qlora.stdout + qlora.stderr


def test_a_killed_training_resumes_from_its_last_checkpoint(env, tmp_path, shared_artifacts, tiny_student):
    settings = {"base_model": str(tiny_student), "max_steps": 40, "batch_size": 2, "save_steps": 5,
                "learning_rate": 2e-3, "eval_fraction": 0.0}
    first = subprocess.Popen(train_command(env, tmp_path, settings), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    staging_root = shared_artifacts / "adapters" / "t" / "baseline"
    deadline = time.monotonic() + 300
    checkpoint = None
    while checkpoint is None:
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint written"
        found = [p for p in staging_root.glob(".*.partial/checkpoints/checkpoint-*/trainer_state.json")]
        checkpoint = found[0].parent if found else None
        time.sleep(0.05)
    staging = checkpoint.parents[1]
    trainer_pid = int((staging / ".lock").read_text())
    os.kill(trainer_pid, signal.SIGKILL)
    output = first.communicate(timeout=300)[0]
    assert first.returncode != 0
    assert f"{checkpoint.name} is kept" in output and "resumes from it" in output, output
    assert not (staging / "model").exists()
    steps_first = len((staging / "progress.jsonl").read_text().splitlines())

    again = train(env, tmp_path, settings)
    assert again.returncode == 0, again.stdout + again.stderr
    adapter = current_adapter(env)
    log = training_log(adapter)
    assert adapter["steps"] == 40 and adapter["resumed_from_step"] >= 5
    assert log["resumed_from_step"] == adapter["resumed_from_step"]
    # Every optimizer step of both attempts is a line of the progress journal: the second
    # attempt ran only what the last checkpoint did not hold.
    attempts = [json.loads(line) for line in (Path(adapter["path"]) / "progress.jsonl").read_text().splitlines()]
    assert len({a["pid"] for a in attempts}) == 2
    assert steps_first <= adapter["resumed_from_step"] + settings["save_steps"]
    assert len(attempts) <= 40 + settings["save_steps"]
    assert not staging.exists()  # registered: the checkpoints are gone

    # The id an uninterrupted run would have: it depends on the rows and the settings only.
    database = Path(env["DAGSTER_HOME"]) / "reflection.duckdb"
    with duckdb.connect(str(database), read_only=True) as con:
        rows = [r for r in con.execute(
            "SELECT record_id, instruction, input, output FROM raw.records WHERE dataset = 't' ORDER BY record_id"
        ).fetchall() if not held_out(r[0], TrainConfig.holdout_fraction)]
    config = TrainConfig(**{**settings, "target_modules": tuple(TrainConfig.target_modules)})
    assert adapter["adapter_id"] == adapter_id_for("baseline", data_fingerprint(rows), config)
    # ... and the curve it would have drawn: the resumed attempt restored the optimizer,
    # the schedule and the place in the data.
    from tests.integration.test_adapters import train_here

    uninterrupted = train_here(config, shared_artifacts, rows, tmp_path / "uninterrupted")
    assert max(abs(a - b) for a, b in zip(uninterrupted["train_losses"], log["train_losses"], strict=True)) < 1e-4


def test_full_fine_tuning_leaves_a_model_the_benchmark_answers_with(env, tmp_path, shared_artifacts):
    import torch

    from reflection_assets.engines.benchmark.answers import GenerationSettings, LoadedModel, Model
    from reflection_assets.engines.models.loading import load_causal_lm

    settings = {"method": "full", "max_steps": 2, "batch_size": 2, "max_length": 64, "save_steps": 0,
                "learning_rate": 1e-4}
    run = train(env, tmp_path, settings)
    assert run.returncode == 0, run.stdout + run.stderr
    adapter = current_adapter(env)
    folder = Path(adapter["path"])
    assert adapter["method"] == "full"
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    assert not (folder / "adapter_config.json").exists()

    said: list[str] = []
    loaded = LoadedModel(Model("baseline", adapter["adapter_id"], adapter["base_model"], "auto", folder),
                         shared_artifacts, said.append)
    [(answer, _, tokens)] = loaded.generate(["Name a colour."], GenerationSettings(max_new_tokens=8), "float32")
    assert answer and tokens > 0
    base, _ = load_causal_lm(adapter["base_model"], shared_artifacts)
    tuned = dict(loaded.lm().named_parameters())
    changed = [name for name, p in base.named_parameters() if not torch.equal(p, tuned[name].to(p.dtype))]
    assert changed  # the benchmark answered with the fine-tuned weights, not the base's


def test_accelerate_launches_the_same_training(tmp_path, shared_artifacts, tiny_student):
    """`launcher: accelerate` (no config file: --multi_gpu, which runs on CPUs through
    torch.distributed too) trains in 2 processes what one process trains here."""
    from reflection_assets.engines.student import trainer
    from reflection_assets.engines.student.adapters import run_process
    from tests.integration.test_adapters import train_here

    rows = [(f"{i:08x}", r["instruction"], r["input"], r["output"]) for i, r in enumerate(ROWS)]
    recipe = TrainConfig(base_model=str(tiny_student), max_steps=4, batch_size=4, learning_rate=5e-3,
                         lora_dropout=0.0, save_steps=0, eval_fraction=0.0)
    alone = train_here(recipe, shared_artifacts, rows, tmp_path / "alone")
    config = TrainConfig(**{**recipe.as_dict(), "target_modules": recipe.target_modules,
                            "launcher": "accelerate", "processes": 2})
    staging = tmp_path / "accelerate"
    staging.mkdir()
    trainer.write_rows(staging / trainer.ROWS, rows)
    trainer.TrainSpec(config.as_dict(), str(shared_artifacts), "test / baseline").save(staging)
    command = trainer.launch_command(config, staging / trainer.SPEC)
    assert command[1:5] == ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2"]
    run_process(command, {})
    result = json.loads((staging / trainer.RESULT).read_text())
    assert result["world_size"] == 2 and result["examples_per_process"] == [8, 8]
    # the tolerance of test_two_processes_train_what_one_does, for the same reason
    assert max(abs(a - b) for a, b in zip(alone["train_losses"], result["train_losses"], strict=True)) < 1e-3


def test_the_trainer_process_imports_neither_datasets_nor_pandas_nor_pyarrow(tmp_path):
    """The trainer's process (`python -m reflection_assets.train`) imports transformers'
    Trainer without Hugging Face `datasets`, which would bring pandas and pyarrow (0.45 s of
    each training process's start). The staging folder here has no spec: the process gets as
    far as importing the Trainer, then fails on the spec."""
    code = ("import sys\n"
            "from reflection_assets.train import main\n"
            "try:\n"
            "    main([sys.argv[1]])\n"
            "except BaseException:\n"
            "    pass\n"
            "print('transformers.trainer' in sys.modules, sorted(m for m in ('datasets', 'pandas', 'pyarrow') if sys.modules.get(m)))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "train_spec.json")], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert done.stdout.splitlines()[-1:] == ["True []"], done.stdout + done.stderr
