"""Fine-tuning the student with transformers' `Trainer`, in the process (or the processes,
under torchrun or accelerate) that `python -m reflection_assets.train` starts.

Everything a training needs and leaves lives in one staging folder, which the launching
side and the training side must both see:

    train_spec.json      what to train: the settings, the artifacts folder, a title
    train_rows.parquet   the training rows, a snapshot (record_id, instruction, input, output)
    checkpoints/         checkpoint-N every save_steps: a killed training resumes from the last
    progress.jsonl       one line per optimizer step of every attempt (step, loss, pid)
    model/               the result: a peft adapter (lora, qlora) or a whole model (full)
    result.json          the metrics, written last by the main process
    error.txt            the message of a training that cannot start, for the launching side

Why `Trainer` and not TRL's `SFTTrainer`: the examples are the ones this package has always
built (its templates, its masking of the prompt, its truncation counts: engines/student/training.py),
so the trainer only has to consume them; SFTTrainer would tokenize and mask the rows again
its own way, and it is one more large dependency. Trainer brings what the loop written here
lacked: torchrun/accelerate (DDP, FSDP, DeepSpeed), mixed precision, activation
checkpointing, checkpoints that restore the optimizer, scheduler and RNG state.

No Dagster here: the adapter assets launch this through Dagster Pipes (assets/adapters.py)."""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from reflection_assets.engines.settings import cpu_threads
from reflection_assets.engines.student.training import (
    Example,
    TrainConfig,
    TrainingError,
    batches,
    build_examples,
    check_config,
    collate,
    cuda_devices,
    resolve_template,
)

SPEC = "train_spec.json"
ROWS = "train_rows.parquet"
CHECKPOINTS = "checkpoints"
PROGRESS = "progress.jsonl"
MODEL = "model"
RESULT = "result.json"
ERROR = "error.txt"
ROW_COLUMNS = ("record_id", "instruction", "input", "output")


@dataclass(frozen=True)
class TrainSpec:
    config: dict[str, object]
    artifacts: str
    title: str  # "dataset / variant", for the log and the plot

    def save(self, staging: Path) -> Path:
        path = staging / SPEC
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> TrainSpec:
        try:
            values = json.loads(path.read_text())
            return cls(values["config"], values["artifacts"], values["title"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrainingError(f"{path}: not a training spec ({exc})") from None


def write_rows(path: Path, rows: Sequence[tuple[str, str, str, str]]) -> None:
    import polars as pl

    frame = pl.DataFrame([list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 4,
                         schema=dict.fromkeys(ROW_COLUMNS, pl.String), orient="col")
    partial = path.with_name(path.name + ".partial")
    frame.write_parquet(partial)
    os.replace(partial, path)


def read_rows(path: Path) -> list[tuple[str, str, str, str]]:
    import polars as pl

    try:
        frame = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise TrainingError(f"{path}: cannot read the training rows ({exc})") from None
    missing = [c for c in ROW_COLUMNS if c not in frame.columns]
    if missing:
        raise TrainingError(f"{path}: no column {', '.join(missing)} (expected {', '.join(ROW_COLUMNS)})")
    return list(frame.select(ROW_COLUMNS).iter_rows())


def last_checkpoint(staging: Path) -> Path | None:
    """The newest complete checkpoint. Trainer writes trainer_state.json last, so a folder
    without it was cut short by a kill and is skipped."""
    folder = staging / CHECKPOINTS
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else ():
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return max(found)[1] if found else None


def launch_command(config: TrainConfig, spec: Path) -> list[str]:
    """The command that trains: the package's trainer module under the configured launcher,
    with this interpreter (so a virtual environment's packages are the ones used)."""
    module = ["-m", "reflection_assets.train", str(spec)]
    if config.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={config.processes}", *module]
    if config.launcher == "accelerate":
        # Without a config file, accelerate needs --multi_gpu to start several processes (it
        # then runs them through torch.distributed, on CPUs too); with one, the file decides.
        extra = (["--config_file", config.accelerate_config] if config.accelerate_config
                 else ["--multi_gpu"] if config.processes > 1 else [])
        return [sys.executable, "-m", "accelerate.commands.launch", *extra,
                f"--num_processes={config.processes}", *module]
    return [sys.executable, *module]


def training_order(train_set: Sequence[Example], config: TrainConfig, total_steps: int, rng: random.Random) -> list[Example]:
    """The examples in the order training consumes them, as many as total_steps need:
    similar lengths together in batches of batch_size (less padding), the batches shuffled
    anew on every pass. Read in this order (a sequential sampler), each global batch is
    batch_size consecutive examples whatever the number of processes (each takes its share)
    and a resumed training skips exactly what it had consumed."""
    need = total_steps * config.batch_size * config.grad_accumulation
    order: list[Example] = []
    while len(order) < need:
        for batch in batches(train_set, config.batch_size, rng):
            order.extend(batch)
    return order[:need]


def _precision(config: TrainConfig) -> str:
    """`auto` resolved on this device (check_config has refused any other value)."""
    from reflection_assets.engines.oracle.settings import resolve_dtype

    return resolve_dtype(config.precision)


def _load_model(config: TrainConfig, artifacts: str, precision: str, checkpointing: bool, threads: int):
    from reflection_assets.engines.models.loading import load_causal_lm

    if config.method == "full":
        # The weights the optimizer updates stay in float32; bfloat16 is the autocast's.
        model, _ = load_causal_lm(config.base_model, artifacts, "float32", threads)
        return model
    options: dict[str, object] = {}
    if config.method == "qlora":
        import torch
        from transformers import BitsAndBytesConfig

        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainingError("method qlora needs bitsandbytes: pip install bitsandbytes") from None
        options = {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if precision == "bfloat16" else torch.float32,
            ),
            "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))},
        }
    # LoRA trains a few weights on a frozen base: the base is kept in bfloat16 where the
    # device computes it (half the memory); peft keeps the adapter's own weights in float32.
    model, _ = load_causal_lm(config.base_model, artifacts, precision, threads, **options)
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules), task_type="CAUSAL_LM",
    ))


class _Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.examples = 0  # collated by this process: its share of the batches

    def __call__(self, examples: Sequence[Example]) -> dict[str, object]:
        self.examples += len(examples)
        ids, mask, labels = collate(examples, self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _per_process(value: int, world: int) -> list[int]:
    if world == 1:
        return [value]
    import torch.distributed as dist

    gathered: list[object] = [None] * world
    dist.all_gather_object(gathered, value)
    return [int(v) for v in gathered]


def run_training(
    staging: Path,
    log: Callable[[str], None] = print,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, object]:
    """Train what staging/train_spec.json says on staging/train_rows.parquet, resuming from
    the last checkpoint there; the main process writes model/ and result.json. Returns the
    metrics (every process returns them; only the main one writes)."""
    import torch
    import transformers
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    started = time.perf_counter()
    spec = TrainSpec.load(staging / SPEC)
    config = TrainConfig.from_dict(spec.config)
    gpus = cuda_devices()
    cuda = gpus > 0
    check_config(config, gpus)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != config.processes:
        raise TrainingError(f"{world} training processes started, but the settings say processes={config.processes}")
    main = int(os.environ.get("RANK", "0")) == 0
    rows = read_rows(staging / ROWS)
    if not rows:
        raise TrainingError("the training set is empty: nothing to train on")
    from reflection_assets.engines.models.loading import load_tokenizer

    # The data is checked with the tokenizer before the model is loaded: bad input fails fast.
    tokenizer = load_tokenizer(config.base_model, spec.artifacts)
    tokenizer.padding_side = "right"
    layout = resolve_template(tokenizer, config.template)
    examples = build_examples(tokenizer, layout, rows, config.max_length)
    if not examples:
        raise TrainingError(
            f"every example is longer than max_length={config.max_length} tokens before its "
            "response starts: raise max_length"
        )
    rng = random.Random(config.seed)
    rng.shuffle(examples)
    n_eval = int(len(examples) * config.eval_fraction) if len(examples) >= 10 else 0
    eval_set, train_set = examples[:n_eval], examples[n_eval:]
    steps_per_epoch = math.ceil(len(train_set) / (config.batch_size * config.grad_accumulation))
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    order = training_order(train_set, config, total_steps, rng)

    precision = _precision(config)
    checkpointing = cuda if config.gradient_checkpointing is None else config.gradient_checkpointing
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = max(1, cpu_threads() // local_world)
    transformers.set_seed(config.seed)  # the LoRA weights' initialization, the same in every process
    model = _load_model(config, spec.artifacts, precision, checkpointing, threads)
    model.config.use_cache = False

    resume = last_checkpoint(staging)
    resumed_from = int(resume.name.removeprefix("checkpoint-")) if resume else 0
    truncated = sum(e.truncated for e in examples)
    device = "cuda" if cuda else "cpu"
    if main:
        log(
            f"training {config.base_model} ({config.method}"
            + (f" r={config.lora_rank}" if config.method != "full" else "")
            + f") on {len(train_set)} examples ({truncated} truncated to {config.max_length} tokens), "
            f"{total_steps} steps, {precision} on {world} process(es) ({device})"
            + (", activation checkpointing" if checkpointing else "")
        )
        if resume:
            log(f"resuming from {resume.name} (step {resumed_from} of {total_steps})")

    per_device = config.batch_size // world
    args = TrainingArguments(
        output_dir=str(staging / CHECKPOINTS),
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=config.grad_accumulation,
        max_steps=total_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=int(total_steps * config.warmup_ratio),
        lr_scheduler_type="linear",
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 1,
        save_total_limit=2,
        eval_strategy="no",
        train_sampling_strategy="sequential",
        seed=config.seed,
        data_seed=config.seed,
        bf16=precision == "bfloat16",
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not cuda,
        ddp_backend="gloo" if world > 1 and not cuda else None,
        ddp_find_unused_parameters=False if world > 1 else None,
        dataloader_num_workers=0,
    )

    progress = staging / PROGRESS
    every = config.log_every_s

    class Progress(TrainerCallback):
        def __init__(self):
            self.last_log = time.perf_counter()
            self.first: tuple[float, int] | None = None  # (time, tokens) when this attempt began

        def on_train_begin(self, args, state, control, **kwargs):
            self.first = (time.perf_counter(), state.num_input_tokens_seen)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            step, loss = state.global_step, float(logs["loss"])
            with progress.open("a") as out:
                out.write(json.dumps({"step": step, "loss": loss, "pid": os.getpid(), "at": time.time()}) + "\n")
            if on_step is not None:
                on_step(step, loss)
            now = time.perf_counter()
            if now - self.last_log >= every or step == total_steps:
                began, tokens = self.first or (now, 0)
                rate = (state.num_input_tokens_seen - tokens) / max(now - began, 1e-9)
                log(f"step {step}/{total_steps}: loss {loss:.4f}, {rate:.0f} tokens/s")
                self.last_log = now

    callback = Progress()
    collator = _Collator(tokenizer.pad_token_id)
    trainer = Trainer(
        model=model, args=args, train_dataset=order, data_collator=collator,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # its dict per step on stdout: Progress logs instead
    trained_at = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    train_wall = time.perf_counter() - trained_at
    # The examples each process trained on in this attempt (the batches evaluate reads are not counted).
    examples_per_process = _per_process(collator.examples, world)
    state = trainer.state
    began_tokens = callback.first[1] if callback.first else 0
    eval_loss = None
    if eval_set:
        eval_loss = float(trainer.evaluate(eval_dataset=eval_set)["eval_loss"])
        if main:
            log(f"eval loss {eval_loss:.4f} on {len(eval_set)} held-out examples")
    out = staging / MODEL
    trainer.save_model(str(out))
    losses = {int(entry["step"]): float(entry["loss"]) for entry in state.log_history if "loss" in entry}
    result = {
        "steps": state.global_step,
        "tokens": int(state.num_input_tokens_seen),
        "train_losses": [losses[step] for step in sorted(losses)],
        "eval_loss": eval_loss,
        "train_examples": len(train_set),
        "eval_examples": len(eval_set),
        "truncated": truncated,
        "precision": precision,
        "method": config.method,
        "world_size": world,
        "device": device,
        "activation_checkpointing": checkpointing,
        "resumed_from_step": resumed_from,
        "examples_per_process": examples_per_process,
        "tokens_per_s": (state.num_input_tokens_seen - began_tokens) / max(train_wall, 1e-9),
        "wall_s": time.perf_counter() - started,
    }
    if main:
        if config.method == "full":
            tokenizer.save_pretrained(out)  # a whole model folder: loadable on its own
        partial = staging / (RESULT + ".partial")
        partial.write_text(json.dumps(result))
        os.replace(partial, staging / RESULT)
    return result
