"""The student: its training settings and the masked examples made from pairs (the
trainer itself is engines/student/trainer.py, run in a process of its own). No Dagster here."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from reflection_assets.errors import UserError
from reflection_assets.method.layouts import chat_template_of, render, user_turn

IGNORE = -100  # label value the loss skips


class TrainingError(UserError):
    """Training cannot start on this input. The message is meant for the user."""


def knob(default: object, doc: str):
    """A training setting: its default and what it means (the adapter assets' config fields
    and their descriptions in the UI come from these)."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class TrainConfig:
    """The paper's recipe (3 epochs, warmup 3%, no weight decay, loss on the response)
    scaled to LoRA on a small student; every field is a knob."""

    base_model: str = knob("SmolLM2-135M-Instruct", "the student: the embedded model, a local folder, or a Hugging Face id in the local cache")
    template: str = knob("auto", "auto (the model's chat template; an error if it has none) or vicuna (the paper's layout)")
    lora_rank: int = knob(8, "LoRA rank")
    lora_alpha: int = knob(16, "LoRA alpha")
    lora_dropout: float = knob(0.05, "LoRA dropout")
    target_modules: tuple[str, ...] = knob(("q_proj", "v_proj"), "the modules LoRA adapts")
    learning_rate: float = knob(2e-4, "AdamW learning rate (the paper's 2e-5 is for full fine-tuning)")
    warmup_ratio: float = knob(0.03, "share of the steps spent warming up, then a linear decay")
    weight_decay: float = knob(0.0, "AdamW weight decay")
    epochs: float = knob(3.0, "passes over the training rows (when max_steps is not set)")
    max_steps: int | None = knob(None, "optimizer steps; caps the epochs when set")
    batch_size: int = knob(4, "examples per forward pass")
    grad_accumulation: int = knob(1, "forward passes per optimizer step (global batch = batch_size x this)")
    max_length: int = knob(256, "tokens per example; longer ones are cut (counted as truncated_examples)")
    eval_fraction: float = knob(0.1, "share of the training rows set aside for the eval loss")
    # Records whose id falls in this fraction (by hash, the same for every variant) are kept
    # out of training altogether: benchmark_scores measures held-out loss on them.
    holdout_fraction: float = knob(0.1, "share of the dataset's records (by id, the same for every adapter) kept out of training for held-out loss")
    seed: int = knob(42, "random seed of the shuffles and the LoRA initialization")
    precision: str = knob("auto", "auto (bfloat16 where the device computes it: base weights for lora and qlora, autocast for full) or float32")
    log_every_s: float = 10.0
    method: str = knob("lora", "lora (an adapter), qlora (lora on the base loaded in 4 bits with bitsandbytes; CUDA only) or full (every weight: a whole model folder, the paper's recipe)")
    gradient_checkpointing: bool | None = knob(None, "recompute activations in the backward pass (less memory, about 20% slower); null: on when training on a GPU")
    save_steps: int = knob(50, "a checkpoint every this many optimizer steps, in the adapter's staging folder: a killed training resumes from the last one (0: none)")
    launcher: str = knob("python", "python (one process), torchrun or accelerate (several processes per host)")
    processes: int = knob(1, "training processes on this host (one per GPU); batch_size is split between them")
    accelerate_config: str | None = knob(None, "an accelerate config file (FSDP, DeepSpeed) for launcher accelerate")

    def as_dict(self) -> dict[str, object]:
        values = asdict(self)
        values["target_modules"] = list(self.target_modules)
        return values

    def identity(self) -> dict[str, object]:
        """What the adapter id is derived from: every setting that changes what is computed.
        How often checkpoints are written and whether activations are recomputed do not; the
        settings added with the trainer count only when they differ from their defaults, so
        the adapters trained before them keep their ids."""
        values = self.as_dict()
        for name in ("save_steps", "gradient_checkpointing"):
            values.pop(name)
        for name in _LATER_SETTINGS:
            if values[name] == getattr(TrainConfig, name):
                values.pop(name)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingError(f"unknown training setting(s) {', '.join(unknown)}: expected some of {', '.join(sorted(known))}")
        values = dict(values)
        if "target_modules" in values:
            values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)


_LATER_SETTINGS = ("method", "launcher", "processes", "accelerate_config")
METHODS = ("lora", "qlora", "full")
LAUNCHERS = ("python", "torchrun", "accelerate")
PRECISIONS = ("auto", "float32", "bfloat16")


def cuda_devices() -> int:
    """The CUDA devices this process may use (CUDA_VISIBLE_DEVICES counts), 0 without CUDA.
    Neither call starts a CUDA context: the step process that launches the trainer keeps no
    GPU memory."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_config(config: TrainConfig, gpus: int | None = None) -> None:
    """Settings that cannot work, refused before anything is loaded or launched. `gpus` is
    this host's CUDA device count (cuda_devices() when None)."""
    if config.method not in METHODS:
        raise TrainingError(f"method {config.method!r}: expected one of {', '.join(METHODS)}")
    if config.launcher not in LAUNCHERS:
        raise TrainingError(f"launcher {config.launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    if config.processes < 1:
        raise TrainingError(f"processes={config.processes}: expected at least 1")
    if config.processes > 1 and config.launcher == "python":
        raise TrainingError(f"processes={config.processes} needs launcher torchrun or accelerate (python runs one process)")
    if config.batch_size < 1 or config.batch_size % config.processes:
        raise TrainingError(
            f"batch_size={config.batch_size} is split between {config.processes} processes: expected a multiple of {config.processes}"
        )
    if config.precision not in PRECISIONS:
        raise TrainingError(f"precision {config.precision!r}: expected {', '.join(PRECISIONS)}")
    if config.save_steps < 0:
        raise TrainingError(f"save_steps={config.save_steps}: expected 0 (no checkpoints) or more")
    if config.accelerate_config is not None:
        if config.launcher != "accelerate":
            raise TrainingError("accelerate_config is read by launcher accelerate only: set launcher to accelerate")
        if not Path(config.accelerate_config).is_file():
            raise TrainingError(f"accelerate_config {config.accelerate_config}: no such file")
    if gpus is None and (config.processes > 1 or config.method == "qlora"):
        gpus = cuda_devices()
    # With CUDA each process takes one GPU and NCCL refuses two on one device ("invalid
    # usage", measured on one H200): say so before anything starts. Without CUDA, several
    # processes share the CPUs over gloo.
    if gpus and config.processes > gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise TrainingError(
            f"processes={config.processes}, but this host has {gpus} GPU{'s' if gpus > 1 else ''}"
            + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
            + f": each training process takes a GPU of its own. Set processes to at most {gpus}"
        )
    if config.method == "qlora" and not gpus:
        raise TrainingError(
            "method qlora loads the base in 4 bits with bitsandbytes, which needs CUDA: no CUDA device "
            "here. Use method lora (or full) on this host, or train on a host with a GPU"
        )


@dataclass(frozen=True)
class Example:
    record_id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def resolve_template(tokenizer, template: str) -> str:
    """'chat' (the model's own chat template) or 'vicuna' (the paper's layout).

    `auto` uses the model's chat template; a model without one is an error rather than a
    silent change of layout: the user says `vicuna` (or gives the model a template)."""
    if template not in ("auto", "chat", "vicuna"):
        raise TrainingError(f"template {template!r}: expected auto, chat or vicuna")
    if template == "vicuna":
        return "vicuna"
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingError(
            "the base model has no chat template and none is configured: set the adapter's "
            "template to 'vicuna' to use the paper's Vicuna layout"
        )
    return "chat"


def encode(
    tokenizer, layout: str, record_id: str, instruction: str, response: str, max_length: int, input_text: str = ""
) -> Example:
    """Token ids of the layout's prompt (method/layouts.py) + response; labels mask
    everything but the response."""
    prefix = render(layout, instruction, input_text, chat_template_of(tokenizer))
    if layout == "chat":
        user = [{"role": "user", "content": user_turn(instruction, input_text)}]
        full = tokenizer.apply_chat_template(
            user + [{"role": "assistant", "content": response}], tokenize=False
        )
        rest = full[len(prefix) :] if full.startswith(prefix) else response + (tokenizer.eos_token or "")
    else:
        rest = " " + response + (tokenizer.eos_token or "")
    # Tokenized apart and joined, so no token straddles the boundary: merging the last
    # prompt token with the first answer token would mask part of the answer.
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    rest_ids = tokenizer(rest, add_special_tokens=False)["input_ids"]
    full_ids = prefix_ids + rest_ids
    labels = [IGNORE] * len(prefix_ids) + rest_ids
    truncated = len(full_ids) > max_length
    return Example(record_id, full_ids[:max_length], labels[:max_length], truncated)


def build_examples(tokenizer, layout: str, rows: Sequence[tuple[str, str, str, str]], max_length: int) -> list[Example]:
    """rows: (record_id, instruction, input, output). Examples whose response is cut away
    entirely by max_length are dropped (they would teach nothing)."""
    examples = []
    for record_id, instruction, input_text, output in rows:
        example = encode(tokenizer, layout, record_id, instruction, output, max_length, input_text)
        if any(label != IGNORE for label in example.labels):
            examples.append(example)
    return examples


def batches(examples: Sequence[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    """Similar lengths together (less padding), batches in random order."""
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    grouped = [list(ordered[i : i + batch_size]) for i in range(0, len(ordered), batch_size)]
    rng.shuffle(grouped)
    return grouped


def collate(batch: Sequence[Example], pad_id: int):
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return ids, mask, labels


def _autocast_dtype(precision: str):
    import torch

    from reflection_assets.engines.oracle.settings import resolve_dtype

    if precision == "float32":
        return None
    return torch.bfloat16 if resolve_dtype("auto" if precision == "auto" else precision) == "bfloat16" else None


def mean_loss(model, examples: Sequence[Example], pad_id: int, batch_size: int, precision: str) -> float:
    """Mean token cross-entropy over the response tokens of `examples`."""
    import torch

    autocast = _autocast_dtype(precision)
    device = next(model.parameters()).device.type
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            ids, mask, labels = (t.to(device) for t in collate(examples[start : start + batch_size], pad_id))
            with torch.autocast(device, dtype=autocast, enabled=autocast is not None):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            shifted = labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), shifted.reshape(-1), ignore_index=IGNORE, reduction="sum"
            )
            total += float(losses)
            count += int((shifted != IGNORE).sum())
    return total / max(count, 1)
