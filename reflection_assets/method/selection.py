"""Selective Reflection-Tuning (arXiv 2402.10110), the parts without a model: the prompt
templates and the texts whose perplexities the student computes, the IFD / r-IFD ratios,
and the rule that keeps, per record, the variant the student can learn from.

Everything here follows the official selection code (selection_code/ in
tianyi-lab/Reflection_Tuning): the same template strings, the response appended to the
template with no separator, the reverse instruction, `instruction + input` as the text
whose guessability r-IFD measures, and the same comparisons. Where that code fails
silently (perplexity 0 on any error, NaN on a prompt longer than max_length, NaN rows for
empty outputs), a variant here has a status and NULL scores instead, and is never kept."""

from __future__ import annotations

import math
from dataclasses import dataclass

from reflection_assets.method.layouts import LAYOUTS, TEMPLATES, render  # noqa: F401 (TEMPLATES: re-exported)

# The templates are the student's layouts (method/layouts.py): V2 scores a pair as the
# student reads it in training. `chat`: the student's own chat template.
TEMPLATE_NAMES = LAYOUTS
DEFAULT_TEMPLATE = "vicuna"

REVERSE_HEAD = "Below is the response to an instruction, please guess the corresponding instruction for the given response.\n"
REVERSE_TAIL = "\nGenerate the instruction for the above response."

# The variants a record can have, in the order the rule reads them.
VARIANTS = ("original", "instruction", "response", "both")
# What the official rule keeps: phase 2 on phase 1's pair, or phase 2 on the original.
KEPT_KINDS = ("both", "response")

# Why a variant has no scores.
OK = "ok"
STATUSES = (OK, "empty_output", "empty_instruction", "too_long", "too_short", "model_error")


def fill(template: str, instruction: str, input_text: str) -> str:
    """The official prompt for a pair (not the chat template: the engine applies that)."""
    return render(template, instruction, input_text)


def reverse_instruction(output: str) -> str:
    """The instruction of the reverse prompt: guess the instruction of this response."""
    return REVERSE_HEAD + output + REVERSE_TAIL


def instruction_span(instruction: str, input_text: str) -> str:
    """What r-IFD measures the guessability of: instruction and input, joined as the
    official code joins them (no separator)."""
    return instruction + input_text


@dataclass(frozen=True)
class Perplexities:
    """The four perplexities of one variant (mean token cross-entropy, exponentiated) and
    their losses. `*_condition` is the span after its prompt, `*_alone` the span by itself."""

    loss_output_condition: float
    loss_output_alone: float
    loss_instruction_condition: float
    loss_instruction_alone: float

    @staticmethod
    def ppl(loss: float) -> float:
        return math.exp(loss)

    @property
    def ifd(self) -> float:
        """ppl(output | prompt) / ppl(output): above 1, the instruction does not help the
        student predict the answer."""
        return self.ppl(self.loss_output_condition) / self.ppl(self.loss_output_alone)

    @property
    def r_ifd(self) -> float:
        """ppl(instruction | reverse prompt with the output) / ppl(instruction): how much
        the answer helps the student guess the instruction (lower: more)."""
        return self.ppl(self.loss_instruction_condition) / self.ppl(self.loss_instruction_alone)

    @property
    def ifd_loss(self) -> float:
        return self.loss_output_condition / self.loss_output_alone

    @property
    def r_ifd_loss(self) -> float:
        return self.loss_instruction_condition / self.loss_instruction_alone


@dataclass(frozen=True)
class VariantScore:
    ifd: float | None
    r_ifd: float | None


@dataclass(frozen=True)
class Decision:
    kept: str | None  # 'both', 'response', or None
    reason: str


def _pair(score: VariantScore | None) -> tuple[float, float] | None:
    """(IFD, r-IFD) of a variant that has both, else None."""
    if score is None or score.ifd is None or score.r_ifd is None:
        return None
    return score.ifd, score.r_ifd


def _kept_if(kind: str, head: str, candidate: tuple[float, float] | None, rival_name: str, rival_r_ifd: float) -> Decision:
    """The rule's second half, the same for both branches: the candidate's r-IFD below its
    rival's, and both its scores below 1."""
    if candidate is None:
        return Decision(None, f"{head}; '{kind}' has no scores")
    ifd, r_ifd = candidate
    if not r_ifd < rival_r_ifd:
        return Decision(None, f"{head}; '{kind}' r-IFD {r_ifd:.4f} not below {rival_name}'s {rival_r_ifd:.4f}")
    if not (ifd < 1 and r_ifd < 1):
        return Decision(None, f"{head}; '{kind}' IFD {ifd:.4f} / r-IFD {r_ifd:.4f} not both below 1")
    return Decision(kind, f"{head}; '{kind}' r-IFD {r_ifd:.4f} below {rival_name}'s {rival_r_ifd:.4f}, IFD {ifd:.4f} below 1")


def decide(scores: dict[str, VariantScore | None]) -> Decision:
    """The official V2 rule (get_select_data.py) for one record.

    If phase 1 raised IFD over the original (the new instruction is harder to follow
    without its answer), `both` is kept when its r-IFD is below `instruction`'s and both
    its IFD and r-IFD are below 1. Otherwise `response` is kept when its r-IFD is below the
    original's and both its scores are below 1. Anything else keeps nothing. A variant
    without scores (a status other than ok) cannot win a comparison, and the reason says
    which one was missing."""
    original = _pair(scores.get("original"))
    instruction = _pair(scores.get("instruction"))
    if original is None:
        return Decision(None, "the original pair has no scores")
    if instruction is not None and instruction[0] > original[0]:
        head = f"instruction raised IFD ({original[0]:.4f} -> {instruction[0]:.4f})"
        return _kept_if("both", head, _pair(scores.get("both")), "'instruction'", instruction[1])
    if instruction is None:
        head = "the reflected instruction has no scores"
    else:
        head = f"instruction did not raise IFD ({original[0]:.4f} -> {instruction[0]:.4f})"
    return _kept_if("response", head, _pair(scores.get("response")), "the original", original[1])


def top_share(ifds: dict[str, float], fraction: float) -> set[str]:
    """Cherry LLM's cut: of the selected records ({record_id: IFD of the kept variant}),
    the `fraction` with the highest IFD (at least one when any was selected); ties broken
    by record id so the cut is deterministic."""
    if not 0 < fraction <= 1:
        raise ValueError(f"top_k={fraction}: expected a fraction above 0 and at most 1")
    ordered = sorted(ifds, key=lambda rid: (-ifds[rid], rid))
    keep = math.ceil(len(ordered) * fraction) if ordered else 0
    return set(ordered[:keep])
