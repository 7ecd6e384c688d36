"""Model work in processes that share the cores: a thread per core in each, against each
taking its share (REFLECTION_THREADS), side by side in one run.

The test suite runs its end-to-end tests in pytest-xdist workers, one per core; each loads
the embedded model to score, train and answer, and torch by default takes a thread per
core. This starts `--processes` processes at once, each loading the embedded model and
doing what those tests do with it: forward and backward passes over a batch (training),
forward passes without gradients (scoring) and a short generation (answering). Once with
REFLECTION_THREADS unset (every process a thread per core), once with it set to
cores // processes, as tests/conftest.py sets it for the workers. Prints each setting's
wall time (the slowest process) and the ratio; the model is converted once, before the
timing.

.venv/bin/python benchmarks/shared_cores.py [--processes 2] [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = [f"Explain in two sentences why item {i} of the list matters to a new reader." for i in range(8)]


def work(artifacts: str, rounds: int) -> float:
    """One process's share: load, then `rounds` of train, score and answer; its wall seconds."""
    import torch

    from reflection_assets.engines.models.loading import EMBEDDED_NAME, load_causal_lm

    started = time.perf_counter()
    model, tokenizer = load_causal_lm(EMBEDDED_NAME, artifacts)
    batch = tokenizer([p * 4 for p in PROMPTS], return_tensors="pt", padding=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)
    for _ in range(rounds):
        model.train()
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            model(**batch)
            short = tokenizer(PROMPTS, return_tensors="pt", padding=True)
            model.generate(**short, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return time.perf_counter() - started


def side(processes: int, rounds: int, artifacts: str, threads: int | None) -> float:
    """Wall seconds until the last of `processes` simultaneous workers ends."""
    env = dict(os.environ)
    env.pop("REFLECTION_THREADS", None)
    if threads:
        env["REFLECTION_THREADS"] = str(threads)
    started = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", artifacts, "--rounds", str(rounds)], env=env)
               for _ in range(processes)]
    if any(w.wait() for w in workers):
        raise SystemExit("a worker failed")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        work(args.worker, args.rounds)
        return
    from reflection_assets.engines.models.loading import embedded_model_dir

    cores = os.cpu_count() or 1
    share = max(1, cores // args.processes)
    artifacts = tempfile.mkdtemp(prefix="shared-cores-")
    embedded_model_dir(artifacts)  # the conversion, once, outside the timing
    print(f"{args.processes} processes at once on {cores} cores, each: load the embedded model, "
          f"{args.rounds} rounds of a training step, a scoring pass and a 16-token generation (batch 8)")
    every = side(args.processes, args.rounds, artifacts, None)
    print(f"  a thread per core in each ({cores} threads each):   {every:6.1f} s", flush=True)
    shared = side(args.processes, args.rounds, artifacts, share)
    print(f"  REFLECTION_THREADS={share} (cores // processes):      {shared:6.1f} s", flush=True)
    print(f"  ratio: {every / shared:.2f}x")


if __name__ == "__main__":
    main()
