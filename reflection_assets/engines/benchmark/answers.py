"""The models a benchmark evaluates and what they produce without a judge: which adapters
are current, each loaded on first use (a fully cached run loads none), greedy answers
stored by what made them (bench.answers: never generated twice), and the loss on
held-out reference answers (cached by a key of the model and the rows)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from reflection_assets.engines.student.adapters import VARIANT_SOURCES, held_out
from reflection_assets.engines.models.decoding import greedy_decode
from reflection_assets.engines.store.queries import queries
from reflection_assets.engines.store.storage import Database
from reflection_assets.engines.benchmark.testsets import TestPrompt
from reflection_assets.errors import UserError
from reflection_assets.method.digests import json_digest

Log = Callable[[str], None]
SQL = queries("benchmark_answers")


class BenchmarkError(UserError):
    """A benchmark that cannot run on this input. The message is meant for the user."""


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    batch_size: int = 16
    dtype: str = "auto"  # auto: bfloat16 where the hardware has it

    def key(self, layout: str, resolved_dtype: str, backend: dict[str, str] | None = None) -> str:
        """What made an answer: greedy decoding, the length limit, the layout, the precision
        (the local backend) or the backend that served it (a server: `{"backend": "openai"}`)."""
        settings = {"decoding": "greedy", "max_new_tokens": self.max_new_tokens, "dtype": resolved_dtype, "layout": layout}
        return json_digest({**settings, **(backend or {})}, ascii=True)


@dataclass(frozen=True)
class Model:
    """A model under evaluation: a registered adapter on its base model, or the base alone."""

    name: str  # baseline, recycled, base
    key: str  # the adapter id, or base:<model>
    base_model: str
    template: str
    adapter_path: Path | None = None
    holdout_fraction: float = 0.0  # the adapter's held-out slice of its dataset


def models_for(db: Database, dataset: str, compare_base: bool) -> list[Model]:
    with db.connect() as con:
        rows = con.execute(SQL.current_adapters, [dataset]).fetchall()
    found = {variant: row for variant, *row in rows}
    missing = [v for v in ("baseline", "recycled") if v not in found]
    # The student-selected adapter (V2) is evaluated when there is one.
    evaluated = ("baseline", "recycled", "selective") if "selective" in found else ("baseline", "recycled")
    if missing:
        raise BenchmarkError(
            f"dataset {dataset!r} has no {' or '.join(missing)} adapter yet: materialize "
            + " and ".join(f"{v}_adapter" for v in missing)
            + " first"
        )
    models = []
    for variant in evaluated:
        adapter_id, base_model, config_json, path = found[variant]
        if not Path(path).exists():
            raise BenchmarkError(f"the {variant} adapter's folder {path} is gone: materialize {variant}_adapter again")
        config = json.loads(config_json)
        models.append(
            Model(variant, adapter_id, base_model, config["template"], Path(path), config.get("holdout_fraction", 0.0))
        )
    for other in models[1:]:
        if other.base_model != models[0].base_model:
            raise BenchmarkError(
                f"the baseline ({models[0].base_model}) and {other.name} ({other.base_model}) adapters "
                "have different base models: the comparison would not be about the data"
            )
    if compare_base:
        models.append(Model("base", f"base:{models[0].base_model}", models[0].base_model, models[0].template))
    return models


# ---------------------------------------------------------------- answering


class LoadedModel:
    """One model in memory, loaded on first use: a fully cached run loads nothing."""

    def __init__(self, model: Model, artifacts: str | Path, log: Log):
        self.model, self.artifacts, self.log = model, artifacts, log
        self._lm = None
        self._tokenizer = None
        self.layout: str | None = None

    def tokenizer(self):
        if self._tokenizer is None:
            from reflection_assets.engines.models.loading import load_tokenizer
            from reflection_assets.engines.student.training import resolve_template

            self._tokenizer = load_tokenizer(self.model.base_model, self.artifacts)
            self._tokenizer.padding_side = "left"
            self.layout = resolve_template(self._tokenizer, self.model.template)
        return self._tokenizer

    def lm(self):
        if self._lm is None:
            from reflection_assets.engines.models.loading import load_causal_lm

            self.tokenizer()
            path = self.model.adapter_path
            adapter = path is not None and (path / "adapter_config.json").exists()
            # method full: the folder is a whole fine-tuned model, loaded instead of the base
            whole = path is not None and not adapter
            lm, _ = load_causal_lm(str(path) if whole else self.model.base_model, self.artifacts)
            if adapter:
                from peft import PeftModel

                lm = PeftModel.from_pretrained(lm, str(path)).merge_and_unload()
            import torch

            lm.to("cuda" if torch.cuda.is_available() else "cpu").eval()
            self.log(f"loaded {self.model.name} ({self.model.key})")
            self._lm = lm
        return self._lm

    def prompt(self, text: str) -> str:
        """A test prompt in the layout the adapter was trained with (method/layouts.py); the
        test set has joined its instruction and input already."""
        from reflection_assets.method.layouts import chat_template_of, render

        tokenizer = self.tokenizer()
        return render(self.layout or "chat", text, "", chat_template_of(tokenizer))

    def generate(self, texts: Sequence[str], settings: GenerationSettings, dtype: str) -> list[tuple[str, str, int]]:
        """(answer, finish_reason, new tokens) per prompt text, greedy."""
        import torch

        lm, tokenizer = self.lm(), self.tokenizer()
        lm.to(getattr(torch, dtype))
        encoded = tokenizer([self.prompt(t) for t in texts], return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = {k: v.to(lm.device) for k, v in encoded.items()}
        # Each answer leaves the batch when it ends (engines/models/decoding.py): generate's greedy
        # tokens without computing the finished answers' padding.
        decoded = greedy_decode(lm, encoded["input_ids"], encoded["attention_mask"], settings.max_new_tokens, tokenizer.eos_token_id)
        answers = []
        for d in decoded:
            answers.append((tokenizer.decode(d.tokens, skip_special_tokens=True).strip(), "stop" if d.ended else "length", len(d.tokens)))
        return answers


def answer_all(
    db: Database,
    loaded: LoadedModel,
    prompts: Sequence[TestPrompt],
    settings: GenerationSettings,
    dtype: str,
    log: Log,
    backend=None,
) -> tuple[dict[str, str], int]:
    """{prompt_hash: answer} for every prompt, generating only what is not stored yet:
    with transformers here, or asked of a server (`backend`, engines/benchmark/served_answers.py)."""
    if backend is not None and backend.served:
        generation_key = settings.key("chat", "served", backend.key_part())
    else:
        loaded.tokenizer()
        generation_key = settings.key(loaded.layout or "", dtype)
    unique = {p.prompt_hash: p.text for p in prompts}
    with db.connect() as con:
        stored = dict(con.execute(SQL.stored_answers, [loaded.model.key, generation_key]).fetchall())
    missing = [(h, t) for h, t in unique.items() if h not in stored]
    if missing:
        log(f"{loaded.model.name}: generating {len(missing)} answers ({len(unique) - len(missing)} stored)")
    served = backend is not None and backend.served
    if served:  # the server batches by itself: every request at once, as many in flight as allowed
        from reflection_assets.engines.benchmark.served_answers import served_answers

        step = max(1, len(missing))
    else:
        tokenizer = loaded.tokenizer() if missing else None
        # Similar lengths together: less padding in each batch.
        missing.sort(key=lambda item: len(tokenizer(item[1])["input_ids"]) if tokenizer else 0)
        step = settings.batch_size
    for start in range(0, len(missing), step):
        batch = missing[start : start + step]
        texts = [t for _, t in batch]
        answers = (served_answers(db, loaded.artifacts, backend, loaded.model, texts, settings, log) if served
                   else loaded.generate(texts, settings, dtype))
        frame = pl.DataFrame(  # noqa: F841 (read by DuckDB by its name)
            {
                "model_key": [loaded.model.key] * len(batch),
                "prompt_hash": [h for h, _ in batch],
                "generation_key": [generation_key] * len(batch),
                "prompt": [t for _, t in batch],
                "answer": [a for a, _, _ in answers],
                "finish_reason": [f for _, f, _ in answers],
                "new_tokens": [n for _, _, n in answers],
                "backend": [backend.kind if served else "local"] * len(batch),
            }
        )
        with db.connect() as con:  # each batch is kept as soon as it exists
            con.execute(SQL.insert_answers)
        stored.update({h: a for (h, _), (a, _, _) in zip(batch, answers, strict=True)})
        log(f"{loaded.model.name}: {min(start + len(batch), len(missing))}/{len(missing)} answers generated")
    return {p.prompt_hash: stored[p.prompt_hash] for p in prompts}, len(missing)


# ---------------------------------------------------------------- held-out loss


def heldout_references(db: Database, dataset: str, models: Sequence[Model], fraction: float) -> dict[str, list]:
    """Reference pairs no evaluated adapter trained on: the held-out slice of the dataset,
    with its original and its recycled answers. Records that some adapter did train on
    (say, one trained with another holdout fraction) are left out."""
    adapter_ids = [m.key for m in models if m.adapter_path is not None]
    params = ", ".join("?" * len(adapter_ids))
    references: dict[str, list] = {}
    with db.connect() as con:
        for reference, table in (("original", VARIANT_SOURCES["baseline"]), ("recycled", VARIANT_SOURCES["recycled"])):
            untrained = SQL.format("untrained_rows", table=table, params=params)
            rows = con.execute(untrained, [dataset, *adapter_ids]).fetchall()
            references[reference] = [r for r in rows if held_out(r[0], fraction)]
    return references


def _loss_key(model: Model, reference: str, rows: Sequence[tuple], precision: str) -> str:
    return json_digest([model.key, reference, precision, [list(r) for r in rows]], ascii=False)


def heldout_loss(
    db: Database,
    loaded: LoadedModel,
    references: dict[str, list],
    max_length: int,
    precision: str,
) -> list[dict[str, object]]:
    from reflection_assets.engines.student.training import build_examples, mean_loss

    results = []
    for reference, rows in references.items():
        if not rows:
            continue
        key = _loss_key(loaded.model, reference, rows, precision)
        with db.connect() as con:
            known = con.execute(SQL.stored_heldout_loss, [key]).fetchone()
        if known is None:
            tokenizer = loaded.tokenizer()
            examples = build_examples(tokenizer, loaded.layout or "chat", rows, max_length)
            if not examples:
                continue
            loss = mean_loss(loaded.lm(), examples, tokenizer.pad_token_id, 8, precision)
            known = (len(examples), loss)
        results.append(
            {
                "model": loaded.model.name,
                "reference": reference,
                "examples": int(known[0]),
                "loss": float(known[1]),
                "perplexity": math.exp(min(float(known[1]), 50.0)),
                "loss_key": key,
            }
        )
    return results
