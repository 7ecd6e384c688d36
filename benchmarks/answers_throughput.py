"""Benchmark answers: the same 64 prompts answered by the local backend (transformers'
generate in the step, the embedded model) and through a server (REFLECTION_ANSWERS_BACKEND
=openai) that takes 200 ms per request, side by side in one run.

The server is the scripted OpenAI-compatible server of the tests, on 127.0.0.1: it stands
for a vLLM or SGLang server whose every request takes 200 ms, a latency that a real
serving engine keeps while answering many requests at once. Both paths go through
`answer_all`, with its cache (a fresh database each, so every answer is made), greedy
decoding and the same `max_new_tokens`.

`--local-batches 16,48` also times the local backend at each generation batch, side by side
(the benchmark's `batch_size`; its answers come from the pruned greedy decoder).

.venv/bin/python benchmarks/answers_throughput.py [--prompts 64] [--max-new-tokens 64] [--latency 0.2]
    [--local-batches 16]
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

from reflection_assets.engines.benchmark.answers import GenerationSettings, LoadedModel, Model, answer_all  # noqa: E402
from reflection_assets.engines.models.loading import EMBEDDED_NAME  # noqa: E402
from reflection_assets.engines.benchmark.served_answers import AnswersBackend  # noqa: E402
from reflection_assets.engines.store.storage import Database  # noqa: E402
from reflection_assets.engines.benchmark.testsets import TestPrompt  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402


def prompts(n: int) -> list[TestPrompt]:
    records = json.loads((REPO / "reflection_assets/data/sample_alpaca.json").read_text())
    texts = [r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "") for r in records][:n]
    return [TestPrompt(f"p{i}", text, "sample") for i, text in enumerate(texts)]


def run(backend: AnswersBackend | None, asked: list[TestPrompt], settings: GenerationSettings, folder: Path) -> float:
    name = backend.kind if backend else f"local-{settings.batch_size}"
    db = Database(folder / f"{name}.duckdb")
    model = Model("base", f"base:{EMBEDDED_NAME}", EMBEDDED_NAME, "auto")
    loaded = LoadedModel(model, folder / "artifacts", lambda line: None)
    if backend is None:
        loaded.lm()  # loading is not answering: both sides are timed from a ready model
    started = time.perf_counter()
    answers, made = answer_all(db, loaded, asked, settings, "float32", lambda line: None, backend)
    assert made == len(asked) and all(answers.values())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--local-batches", default="16", help="generation batches of the local backend, e.g. 16,48")
    args = parser.parse_args()
    asked = prompts(args.prompts)
    batches = [int(b) for b in args.local_batches.split(",")]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=batches[0])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        local_s = run(None, asked, settings, folder)
        others = {b: run(None, asked, GenerationSettings(args.max_new_tokens, b), folder) for b in batches[1:]}
        words = " ".join(["word"] * args.max_new_tokens)
        with FakeOpenAI(latency_s=args.latency, responder=lambda body: words) as server:
            backend = AnswersBackend("openai", server.base_url, "sk-bench", model=EMBEDDED_NAME, max_concurrency=32)
            served_s = run(backend, asked, settings, folder)
    print(f"{len(asked)} prompts, max_new_tokens {args.max_new_tokens}")
    print(f"local backend (embedded model, batch {settings.batch_size}): {local_s:7.2f} s, "
          f"{len(asked) / local_s:7.2f} answers/s")
    for size, seconds in others.items():
        print(f"local backend (embedded model, batch {size}): {seconds:7.2f} s, {len(asked) / seconds:7.2f} answers/s, "
              f"{local_s / seconds:.2f}x batch {settings.batch_size}'s")
    print(f"server, {args.latency * 1000:.0f} ms a request, 32 in flight:       {served_s:7.2f} s, "
          f"{len(asked) / served_s:7.2f} answers/s")
    print(f"the server path: {local_s / served_s:.1f}x the local backend's answers per second")


if __name__ == "__main__":
    main()
