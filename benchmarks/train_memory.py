"""Peak memory and tokens/s of training at max_length 2048: the loop this package used
before the trainer (float32 weights, no activation checkpointing, written here) against
the trainer it uses now (transformers' Trainer, engines/student/trainer.py), with and without
activation checkpointing, side by side in one run.

The model is Llama-shaped, built from a config with random weights (nothing downloaded):
by default 24 layers of width 1024 with the embedded model's 49k vocabulary, about 0.45B
parameters. The examples are the bundled sample's records with long responses, every one
cut at max_length. Each configuration runs in a process of its own, so that its peak
resident memory (CPU) or peak allocated memory (CUDA) is its own; tokens/s counts real
tokens (padding excluded) over the training steps, loading excluded.

.venv/bin/python benchmarks/train_memory.py [--steps 2] [--layers 24] [--hidden 1024] [--max-length 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The trainer's precision is `auto`: bfloat16 base weights where the device computes it
# (float32 on a CPU without AVX-512 BF16 or AMX, such as this project's CI).
CONFIGS = {
    "old loop (float32, no checkpointing)": ("loop", False),
    "trainer, no checkpointing": ("trainer", False),
    "trainer, activation checkpointing": ("trainer", True),
}


def build_model(folder: Path, args: argparse.Namespace) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from transformers import AutoTokenizer

    from reflection_assets.engines.models.loading import embedded_gguf

    gguf = embedded_gguf()  # its tokenizer only: the 135M weights are not converted
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64,
        max_position_embeddings=max(4096, args.max_length), tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return sum(p.numel() for p in model.parameters())


def long_rows(n: int) -> list[tuple[str, str, str, str]]:
    """Sample records whose responses run past 2048 tokens: each followed by the others'."""
    records = json.loads((REPO / "reflection_assets/data/sample_alpaca.json").read_text())
    text = " ".join(r["output"] for r in records)
    return [(f"{i:08x}", records[i]["instruction"], records[i]["input"], records[i]["output"] + " " + text)
            for i in range(n)]


def old_loop(config, artifacts: str, rows, steps: int) -> dict:
    """The loop of engines/student/training.py before the trainer (as it was at 48fb722): float32
    weights on one device, LoRA, AdamW, a plain forward and backward per batch."""
    import torch
    from peft import LoraConfig, get_peft_model

    from reflection_assets.engines.models.loading import load_causal_lm, load_tokenizer
    from reflection_assets.engines.student.training import build_examples, collate, resolve_template

    tokenizer = load_tokenizer(config.base_model, artifacts)
    tokenizer.padding_side = "right"
    examples = build_examples(tokenizer, resolve_template(tokenizer, config.template), rows, config.max_length)
    model, _ = load_causal_lm(config.base_model, artifacts)
    model = get_peft_model(model, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                             lora_dropout=config.lora_dropout,
                                             target_modules=list(config.target_modules), task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    model.train()
    tokens, started = 0, time.perf_counter()
    for step in range(steps):
        batch = examples[step * config.batch_size: (step + 1) * config.batch_size]
        ids, mask, labels = collate(batch, tokenizer.pad_token_id)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
    return {"tokens_per_s": tokens / (time.perf_counter() - started), "tokens": tokens}


def peak_resident_kib() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: that one survives
    exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def one(name: str, folder: Path, args: argparse.Namespace) -> dict:
    from reflection_assets.engines.student import trainer
    from reflection_assets.engines.student.training import TrainConfig

    kind, checkpointing = CONFIGS[name]
    config = TrainConfig(base_model=str(folder / "model"), max_length=args.max_length, batch_size=1,
                         max_steps=args.steps, eval_fraction=0.0, save_steps=0, precision="auto",
                         gradient_checkpointing=checkpointing)
    rows = long_rows(args.steps)
    artifacts = str(folder / "artifacts")
    if kind == "loop":
        measured = old_loop(config, artifacts, rows, args.steps)
    else:
        staging = Path(tempfile.mkdtemp(dir=folder))
        trainer.write_rows(staging / trainer.ROWS, rows)
        trainer.TrainSpec(config.as_dict(), artifacts, "benchmark").save(staging)
        result = trainer.run_training(staging, log=lambda line: None)
        measured = {"tokens_per_s": result["tokens_per_s"], "tokens": result["tokens"]}
    import torch

    if torch.cuda.is_available():
        measured["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        measured["where"] = "CUDA allocated"
    else:
        measured["peak_gib"] = peak_resident_kib() / 2**20
        measured["where"] = "CPU resident"
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, Path(args.folder), args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        params = build_model(folder, args)
        print(f"Llama-shaped model from a config: {params / 1e9:.2f}B parameters, {args.layers} layers of "
              f"{args.hidden}; {args.steps} steps of one {args.max_length}-token example; "
              f"{os.cpu_count()} CPUs" + (", CUDA" if _cuda() else ""))
        results = {}
        for name in CONFIGS:
            command = [sys.executable, __file__, "--one", name, "--folder", tmp, "--steps", str(args.steps),
                       "--layers", str(args.layers), "--hidden", str(args.hidden), "--max-length", str(args.max_length)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{name}: failed\n{done.stderr[-2000:]}")
                continue
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[name]
            print(f"{name:40s} peak {r['peak_gib']:6.2f} GiB ({r['where']}), {r['tokens_per_s']:8.1f} tokens/s")
        old = results.get("old loop (float32, no checkpointing)")
        if old:
            for name, r in results.items():
                if r is not old:
                    print(f"{name}: {r['peak_gib'] / old['peak_gib']:.2f}x the old loop's peak memory, "
                          f"{r['tokens_per_s'] / old['tokens_per_s']:.2f}x its tokens/s")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
