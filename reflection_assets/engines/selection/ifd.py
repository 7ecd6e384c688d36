"""The student's IFD / r-IFD scores: four perplexities per (instruction, input, output),
computed by the student base model in batched forward passes.

Per pair, as the official selection code defines them (method/selection.py):
- output given the prompt: the template filled with instruction and input, the output
  right after it, the loss on the output tokens;
- output alone: the output with the tokenizer's own special tokens, the loss on every
  token the model predicts (as `labels=input_ids` does);
- instruction given the reverse prompt: the no-input template filled with the reverse
  instruction around the output, then instruction + input, the loss on those;
- instruction alone, like the output alone.

Unlike the official code the prompt and the span are tokenized apart and joined, so the
boundary is exact; a sequence longer than max_length keeps the same span tokens in its
conditional and its unconditional form (as the official truncation does), and a prompt
that leaves no room for the span is `too_long`, never a NaN that vanishes; a failing batch
is retried a sequence at a time and only the sequence that fails is `model_error`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from reflection_assets.engines.oracle.settings import DTYPES, setting
from reflection_assets.engines.student.training import TrainConfig
from reflection_assets.errors import UserError
from reflection_assets.method.digests import json_digest
from reflection_assets.method.selection import (
    DEFAULT_TEMPLATE,
    OK,
    TEMPLATE_NAMES,
    Perplexities,
    instruction_span,
    reverse_instruction,
)

IGNORE = -100
Log = Callable[[str], None]
# Sequences per forward pass are bounded by tokens too: the vocabulary projection of a
# batch is tokens x vocabulary floats.
MAX_BATCH_TOKENS = 8192


class ScoringError(UserError):
    """Scoring cannot start with these settings. The message is meant for the user."""


STUDENT_PREFIX = "REFLECTION_STUDENT_"


@dataclass(frozen=True)
class StudentSettings:
    """The student that scores variants; each field is also REFLECTION_STUDENT_<env>. The
    resource, its descriptions and the table of docs/selection.md come from here."""

    model: str = setting(TrainConfig.base_model, "MODEL", "the scoring model: use the adapters' `base_model` (`selective_adapter` warns, and names the scorer in `selected_by`, when they differ)")
    template: str = setting(DEFAULT_TEMPLATE, "TEMPLATE", "`vicuna` (the official default), `alpaca`, `wizardlm`, or `chat` (the model's own chat template)")
    max_length: int = setting(2048, "MAX_LENGTH", "tokens per scored sequence")
    dtype: str = setting("auto", "DTYPE", "`auto` (bfloat16 autocast where the hardware has it), `float32`, `bfloat16`")
    batch_size: int = setting(16, "BATCH_SIZE", "sequences per forward pass (also bounded by tokens)")


@dataclass(frozen=True)
class Pair:
    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class PairScore:
    status: str  # ok, empty_output, empty_instruction, too_long, too_short, model_error
    reason: str
    losses: Perplexities | None  # set exactly when status is ok
    truncated: bool = False  # a span was cut to fit max_length (both its forms alike)


@dataclass
class _Sequence:
    ids: list[int]
    labels: list[int]
    loss: float | None = None
    error: str | None = None


class StudentScorer:
    """One student model, loaded on first use (a fully cached shard loads nothing)."""

    def __init__(
        self,
        model: str,
        artifacts: str | Path,
        template: str = "vicuna",
        max_length: int = 2048,
        dtype: str = "auto",
        batch_size: int = 16,
        log: Log = print,
    ):
        from reflection_assets.engines.oracle.settings import resolve_dtype

        if template not in TEMPLATE_NAMES:
            raise ScoringError(f"template {template!r}: expected one of {', '.join(TEMPLATE_NAMES)}")
        if dtype not in DTYPES:
            raise ScoringError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        if max_length < 2 or batch_size < 1:
            raise ScoringError("max_length must be 2 or more and batch_size 1 or more")
        self.model_name, self.artifacts, self.template = model, artifacts, template
        self.max_length, self.batch_size, self.log = max_length, batch_size, log
        self.dtype = resolve_dtype(dtype)
        self._tokenizer = None
        self._model = None
        self._specials: tuple[list[int], list[int]] | None = None
        self._settings_key: dict[str, object] | None = None

    @classmethod
    def of(cls, settings: StudentSettings, artifacts: str | Path, log: Log = print) -> "StudentScorer":
        return cls(settings.model, artifacts, settings.template, settings.max_length, settings.dtype, settings.batch_size, log)

    # ------------------------------------------------------------ identity

    def settings_key(self) -> dict[str, object]:
        """What changes a score besides the text: the cache key and the fingerprint."""
        if self._settings_key is None:
            from reflection_assets.engines.models.loading import model_identity

            self._settings_key = {
                "model": model_identity(self.model_name, self.artifacts),
                "template": self.template,
                "max_length": self.max_length,
                "dtype": self.dtype,
                "definition": "official-v1",
            }
        return self._settings_key

    def key(self, pair: Pair) -> str:
        return json_digest([self.settings_key(), pair.instruction, pair.input, pair.output], ascii=True)

    # ------------------------------------------------------------ tokens

    def tokenizer(self):
        if self._tokenizer is None:
            from reflection_assets.engines.models.loading import shared_tokenizer

            tokenizer = shared_tokenizer(self.model_name, self.artifacts)
            if self.template == "chat" and not getattr(tokenizer, "chat_template", None):
                raise ScoringError(
                    f"{self.model_name} has no chat template: score with template vicuna, alpaca or wizardlm"
                )
            self._tokenizer = tokenizer
        return self._tokenizer

    def specials(self) -> tuple[list[int], list[int]]:
        """The tokens the tokenizer itself adds before and after a text (Llama: BOS)."""
        if self._specials is None:
            tokenizer = self.tokenizer()
            probe = "Hello world"
            bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
            full = tokenizer(probe, add_special_tokens=True)["input_ids"]
            start = next(i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare)
            self._specials = (full[:start], full[start + len(bare) :])
        return self._specials

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer()(text, add_special_tokens=False)["input_ids"]

    def _prompt(self, instruction: str, input_text: str) -> str:
        """The pair's prompt in the student's layout: the formatter training uses too."""
        from reflection_assets.method.layouts import chat_template_of, render

        chat = chat_template_of(self.tokenizer()) if self.template == "chat" else None
        return render(self.template, instruction, input_text, chat)

    def _span_pair(self, prompt: str, span: str) -> tuple[_Sequence, _Sequence, bool] | str:
        """(conditional, alone, whether the span was cut) for a span after a prompt, or why
        there are none."""
        head, tail = self.specials()
        # A chat template's text already begins with the model's own special tokens.
        prompt_ids = (head if self.template != "chat" else []) + self._ids(prompt)
        room = self.max_length - len(prompt_ids)
        if room < 1:
            return f"too_long: the prompt is {len(prompt_ids)} tokens, max_length {self.max_length}"
        whole = self._ids(span) + tail
        target = whole[:room]
        alone = head + target
        if len(alone) < 2 and not head:
            return "too_short: the span is one token, which the model cannot predict without context"
        conditional = _Sequence(prompt_ids + target, [IGNORE] * len(prompt_ids) + target)
        # labels = input_ids, as the official code: every token after the first is predicted.
        return conditional, _Sequence(alone, list(alone)), len(target) < len(whole)

    def _sequences(self, pair: Pair) -> tuple[list[_Sequence], bool] | PairScore:
        if pair.output.strip() == "":
            return PairScore("empty_output", "the output is empty", None)
        span = instruction_span(pair.instruction, pair.input)
        if span.strip() == "":
            return PairScore("empty_instruction", "the instruction and input are empty", None)
        output_pair = self._span_pair(self._prompt(pair.instruction, pair.input), pair.output)
        instruction_pair = self._span_pair(self._prompt(reverse_instruction(pair.output), ""), span)
        for which, made in (("output", output_pair), ("instruction", instruction_pair)):
            if isinstance(made, str):
                status, _, why = made.partition(": ")
                return PairScore(status, f"{which}: {why}", None)
        return [*output_pair[:2], *instruction_pair[:2]], output_pair[2] or instruction_pair[2]  # type: ignore[index]

    # ------------------------------------------------------------ the model

    def model(self):
        if self._model is None:
            import torch

            from reflection_assets.engines.models.loading import shared_causal_lm

            # float32 weights; bfloat16 runs as autocast, so the residual stream, norms and
            # the loss stay in float32 (pure bfloat16 weights moved IFD by up to 10%). Loaded
            # once per process: a run over many shards makes a scorer for each.
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self._model, _ = shared_causal_lm(self.model_name, self.artifacts, "float32", device)
            self.log(f"student {self.model_name} ready for scoring ({self.dtype}, {device})")
        return self._model

    def _forward(self, batch: Sequence[_Sequence]) -> list[float]:
        """Mean token cross-entropy of each sequence over its labelled tokens. The
        vocabulary projection is computed only where a label is, not at every position."""
        import torch

        model = self.model()
        device = next(model.parameters()).device
        pad = self.tokenizer().pad_token_id or 0
        width = max(len(s.ids) for s in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq.ids)] = torch.tensor(seq.ids)
            labels[row, : len(seq.labels)] = torch.tensor(seq.labels)
            mask[row, : len(seq.ids)] = 1
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        autocast = self.dtype == "bfloat16"
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            targets = labels[:, 1:]
            where = targets != IGNORE
            if _plain_head(model):
                hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
                logits = model.get_output_embeddings()(hidden[:, :-1][where]).float()
            else:
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][where].float()
            losses = torch.nn.functional.cross_entropy(logits, targets[where], reduction="none")
            rows = torch.arange(len(batch), device=device).unsqueeze(1).expand_as(targets)[where]
            sums = torch.zeros(len(batch), device=device).index_add_(0, rows, losses)
            counts = where.sum(dim=1)
        return [float(s) / int(c) if int(c) else math.nan for s, c in zip(sums.cpu(), counts.cpu(), strict=True)]

    def _run(self, sequences: list[_Sequence]) -> None:
        """Every sequence gets a loss or an error; similar lengths share a batch."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].ids))
        batches: list[list[int]] = []
        for index in order:
            if batches and len(batches[-1]) < self.batch_size and (
                (len(batches[-1]) + 1) * len(sequences[index].ids) <= MAX_BATCH_TOKENS
            ):
                batches[-1].append(index)
            else:
                batches.append([index])
        for number, batch in enumerate(batches, 1):
            try:
                losses = self._forward([sequences[i] for i in batch])
            except (RuntimeError, ValueError, MemoryError) as exc:
                if len(batch) == 1:
                    sequences[batch[0]].error = f"{type(exc).__name__}: {str(exc)[:300]}"
                    continue
                self.log(f"a batch of {len(batch)} failed ({type(exc).__name__}); scoring its sequences one by one")
                for index in batch:
                    try:
                        sequences[index].loss = self._forward([sequences[index]])[0]
                    except (RuntimeError, ValueError, MemoryError) as one:
                        sequences[index].error = f"{type(one).__name__}: {str(one)[:300]}"
                continue
            for index, loss in zip(batch, losses, strict=True):
                sequences[index].loss = loss
            if number % 20 == 0:
                self.log(f"scored {number}/{len(batches)} batches")

    def score(self, pairs: Sequence[Pair]) -> list[PairScore]:
        """A score per pair, in order. Identical sequences are computed once."""
        planned: list[tuple[list[_Sequence], bool] | PairScore] = [self._sequences(p) for p in pairs]
        unique: dict[tuple[tuple[int, ...], tuple[int, ...]], _Sequence] = {}
        for plan in planned:
            if not isinstance(plan, PairScore):
                for seq in plan[0]:
                    unique.setdefault((tuple(seq.ids), tuple(seq.labels)), seq)
        if unique:
            self._run(list(unique.values()))
        results = []
        for plan in planned:
            if isinstance(plan, PairScore):
                results.append(plan)
                continue
            computed = [unique[(tuple(s.ids), tuple(s.labels))] for s in plan[0]]
            failed = next((s.error for s in computed if s.error), None)
            if failed is None and not all(s.loss is not None and math.isfinite(s.loss) and s.loss > 0 for s in computed):
                failed = "a loss was not a positive finite number"
            if failed is not None:
                results.append(PairScore("model_error", failed, None))
                continue
            results.append(PairScore(OK, "", Perplexities(*(s.loss for s in computed)), plan[1]))  # type: ignore[arg-type]
        return results


def _plain_head(model) -> bool:
    """Whether logits are just the output embedding applied to the last hidden state (no
    soft-capping or scaling, which some architectures add in their forward)."""
    config = model.config
    plain = getattr(config, "final_logit_softcapping", None) is None and getattr(config, "logit_scale", None) is None
    return plain and hasattr(model, "get_decoder") and model.get_output_embeddings() is not None
