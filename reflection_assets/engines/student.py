"""The student: turning pairs into masked training examples and fine-tuning LoRA adapters
with transformers and peft. No Dagster here; the adapter assets call `train_adapter`."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reflection_assets.errors import UserError

VICUNA_TEMPLATE = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions. USER: {prompt} ASSISTANT:"
)
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
    precision: str = knob("auto", "auto (bfloat16 autocast where supported) or float32")
    log_every_s: float = 10.0

    def as_dict(self) -> dict[str, object]:
        values = asdict(self)
        values["target_modules"] = list(self.target_modules)
        return values


@dataclass(frozen=True)
class Example:
    record_id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool


@dataclass
class TrainResult:
    steps: int = 0
    tokens: int = 0  # tokens seen in training, padding excluded
    train_losses: list[float] = field(default_factory=list)  # per optimizer step
    eval_loss: float | None = None
    train_examples: int = 0
    eval_examples: int = 0
    truncated: int = 0
    wall_s: float = 0.0
    tokens_per_s: float = 0.0  # training steps only, loading and evaluation excluded
    precision: str = "float32"
    model: object = field(default=None, repr=False)  # the trained peft model, for callers that go on


def prompt_text(instruction: str, input_text: str) -> str:
    return instruction + (f"\n\n{input_text}" if input_text else "")


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


def encode(tokenizer, layout: str, record_id: str, prompt: str, response: str, max_length: int) -> Example:
    """Token ids of prompt + response; labels mask everything but the response."""
    if layout == "chat":
        user = [{"role": "user", "content": prompt}]
        prefix = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            user + [{"role": "assistant", "content": response}], tokenize=False
        )
        rest = full[len(prefix) :] if full.startswith(prefix) else response + (tokenizer.eos_token or "")
    else:
        prefix = VICUNA_TEMPLATE.format(prompt=prompt)
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
        example = encode(tokenizer, layout, record_id, prompt_text(instruction, input_text), output, max_length)
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


def device_of(model) -> str:
    return next(model.parameters()).device.type


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
    device = device_of(model)
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


def train_adapter(
    config: TrainConfig,
    artifacts: str | Path,
    rows: Sequence[tuple[str, str, str, str]],
    out_dir: Path,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """LoRA-tune config.base_model on rows and save the adapter (peft format) in out_dir."""
    import torch
    from peft import LoraConfig, get_peft_model

    from reflection_assets.engines.models import load_causal_lm, load_tokenizer

    if not rows:
        raise TrainingError("the training set is empty: nothing to train on")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    # The data is checked with the tokenizer before the model is loaded: bad input fails fast.
    tokenizer = load_tokenizer(config.base_model, artifacts)
    tokenizer.padding_side = "right"
    layout = resolve_template(tokenizer, config.template)
    examples = build_examples(tokenizer, layout, rows, config.max_length)
    if not examples:
        raise TrainingError(
            f"every example is longer than max_length={config.max_length} tokens before its "
            "response starts: raise max_length"
        )
    model, _ = load_causal_lm(config.base_model, artifacts)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    rng.shuffle(examples)
    n_eval = int(len(examples) * config.eval_fraction) if len(examples) >= 10 else 0
    eval_set, train_set = examples[:n_eval], examples[n_eval:]

    model = get_peft_model(
        model,
        LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    steps_per_epoch = math.ceil(len(train_set) / (config.batch_size * config.grad_accumulation))
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    warmup = int(total_steps * config.warmup_ratio)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / max(1, warmup) if step < warmup else max(0.0, (total_steps - step) / max(1, total_steps - warmup)),
    )
    autocast = _autocast_dtype(config.precision)
    pad_id = tokenizer.pad_token_id
    result = TrainResult(
        train_examples=len(train_set),
        eval_examples=len(eval_set),
        truncated=sum(e.truncated for e in examples),
        precision="bfloat16" if autocast is not None else "float32",
    )
    log(
        f"training {config.base_model} with LoRA r={config.lora_rank} on {len(train_set)} examples "
        f"({result.truncated} truncated to {config.max_length} tokens), {total_steps} steps, "
        f"{result.precision} on {device}"
    )
    model.train()
    queue: list[list[Example]] = []
    train_started = last_log = time.perf_counter()
    while result.steps < total_steps:
        step_loss, step_tokens = 0.0, 0
        for _ in range(config.grad_accumulation):
            if not queue:
                queue = batches(train_set, config.batch_size, rng)
            ids, mask, labels = (t.to(device) for t in collate(queue.pop(), pad_id))
            with torch.autocast(device, dtype=autocast, enabled=autocast is not None):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            (loss / config.grad_accumulation).backward()
            step_loss += float(loss.detach()) / config.grad_accumulation
            step_tokens += int(mask.sum())
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        result.steps += 1
        result.tokens += step_tokens
        result.train_losses.append(step_loss)
        if time.perf_counter() - last_log >= config.log_every_s or result.steps == total_steps:
            elapsed = time.perf_counter() - train_started
            log(f"step {result.steps}/{total_steps}: loss {step_loss:.4f}, {result.tokens / elapsed:.0f} tokens/s")
            last_log = time.perf_counter()
    result.tokens_per_s = result.tokens / (time.perf_counter() - train_started)
    if eval_set:
        result.eval_loss = mean_loss(model, eval_set, pad_id, config.batch_size, config.precision)
        log(f"eval loss {result.eval_loss:.4f} on {len(eval_set)} held-out examples")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    result.wall_s = time.perf_counter() - started
    result.model = model
    return result
