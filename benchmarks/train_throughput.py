"""Training throughput: our LoRA loop against a plain transformers Trainer, side by side.

Same base model (the embedded SmolLM2-135M-Instruct), same masked examples (the bundled
sample, chat template), same LoRA config, batch size, step count and precision. Counts
real tokens (padding excluded) per second of training, loading excluded, for both.

.venv/bin/python benchmarks/train_throughput.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reflection_assets.engines.models import load_causal_lm, load_tokenizer  # noqa: E402
from reflection_assets.engines.oracle.settings import resolve_dtype  # noqa: E402
from reflection_assets.engines.student import TrainConfig, build_examples, train_adapter  # noqa: E402


def trainer_baseline(config: TrainConfig, artifacts: Path, examples, out: Path) -> tuple[float, int]:
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer = load_tokenizer(config.base_model, artifacts)
    model, _ = load_causal_lm(config.base_model, artifacts)
    model = get_peft_model(
        model,
        LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                   target_modules=list(config.target_modules), task_type="CAUSAL_LM"),
    )
    data = datasets.Dataset.from_list(
        [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)} for e in examples]
    )
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    seen = [0]

    def counting(features):
        batch = collate(features)
        seen[0] += int(batch["attention_mask"].sum())
        return batch

    bf16 = resolve_dtype("auto") == "bfloat16"
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=config.batch_size, max_steps=config.max_steps,
        learning_rate=config.learning_rate, warmup_steps=int(config.max_steps * config.warmup_ratio),
        lr_scheduler_type="linear",
        weight_decay=config.weight_decay, bf16=bf16, use_cpu=True, logging_steps=10_000,
        save_strategy="no", report_to=[], dataloader_num_workers=0, seed=config.seed,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=counting)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, seen[0]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    rows = [
        (str(i), r["instruction"], r["input"], r["output"])
        for i, r in enumerate(json.loads((REPO / "reflection_assets/data/sample_alpaca.json").read_text()))
    ]
    config = TrainConfig(max_steps=args.steps, batch_size=4, eval_fraction=0.0, log_every_s=3600)
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = Path(tmp) / "artifacts"
        tokenizer = load_tokenizer(config.base_model, artifacts)  # converts the model once
        examples = build_examples(tokenizer, "chat", rows, config.max_length)
        ours = train_adapter(config, artifacts, rows, Path(tmp) / "ours", log=lambda _: None)
        wall, tokens = trainer_baseline(config, artifacts, examples, Path(tmp) / "trainer")
    theirs = tokens / wall
    print(f"{len(rows)} examples, {args.steps} steps of batch 4, LoRA r={config.lora_rank} on {config.target_modules}, "
          f"{ours.precision}, 2 cores")
    print(f"{'loop':<28}{'tokens/s':>10}")
    print(f"{'plain transformers Trainer':<28}{theirs:>10.0f}")
    print(f"{'ours':<28}{ours.tokens_per_s:>10.0f}")
    print(f"ours / Trainer: {ours.tokens_per_s / theirs:.2f}x (real tokens, padding excluded; "
          "ours groups similar lengths into a batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
