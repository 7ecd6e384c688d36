"""Prompt profiles, each one value: the calls of every reflection phase with their parsers,
the judge's protocol, and the versions, derived from the prompt text. Pure: no I/O.

`paper`: the method's prompts as published, critique first and sections after, for oracles
that follow long instructions (any capable endpoint). `compact`: the same criteria in a few
lines, no critique, the reply's section marker already written for the model to continue,
one section per call: what a small local model can follow (the embedded 135M model echoes
the paper prompt until max_tokens). `auto` picks compact for the local backend and paper for
endpoints (engines/oracle/kinds.py).

The engines loop over a profile's steps (engines/reflection/phases.py) and call its judge the way
its protocol says (engines/benchmark/judge.py); nothing compares a profile's name.

**Versions.** A profile's version is part of every request and of the oracle's fingerprint,
so a change of prompt text must come with a new one: the version is derived from what the
profile sends (every message its builders make for a few fixed records, its stop strings,
per-section limits and constraint). Texts that were published under a name keep it
(`PUBLISHED`: their requests are already cached and journaled under it); any other text is
`<name>-<12 hex digits of its digest>`, so an edited prompt is a new version without anyone
remembering to bump one, and the shards made with the old one read stale."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from reflection_assets.errors import SettingsError
from reflection_assets.method import compact_prompts, judging, prompts
from reflection_assets.method.parsing import INSTRUCTION_SECTIONS, RESPONSE_SECTIONS
from reflection_assets.method.prompts import BETTER_ANSWER, NEW_ANSWER, NEW_INSTRUCTION
from reflection_assets.method.records import Record
from reflection_assets.method.requests import YES_SCORE, Message

AUTO, PAPER, COMPACT = "auto", "paper", "compact"
PROMPT_SETTINGS = (AUTO, PAPER, COMPACT)


@dataclass(frozen=True)
class Step:
    """One oracle call per record of a phase.

    `build` makes the messages from the record and the sections earlier steps of the phase
    found. A step that `continues` opens its one section's marker in the assistant turn and
    the reply continues it (method/parsing.parse_continuation, which refuses the record's
    `original` text back); otherwise the reply holds every section (parse_sections). A
    `repairable` step gives a reply that failed to parse one follow-up call saying what was
    wrong (prompts.repair), when the stage's `repair` setting allows. `finish` rewrites a
    continued section once parsed (the compact profile folds the record's input into a new
    instruction)."""

    sections: tuple[str, ...]
    build: Callable[[Record, Mapping[str, str]], list[Message]]
    continues: bool = False
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    original: Callable[[Record], str | None] = lambda record: None
    finish: Callable[[Record, str], str] | None = None
    repairable: bool = False

    def __post_init__(self) -> None:
        if self.continues and len(self.sections) != 1:
            raise ValueError("a continued step writes exactly one section")


@dataclass(frozen=True)
class Phase:
    """The steps of one reflection phase, in order: a record that fails a step is not asked
    the next, and keeps its pair."""

    steps: tuple[Step, ...]

    @property
    def sections(self) -> tuple[str, ...]:
        return tuple(name for step in self.steps for name in step.sections)

    def follow_ups(self, repair: bool) -> int:
        """Calls a record can need after its first one, at most: later steps, and a repair
        per repairable step when repairs are on."""
        return len(self.steps) - 1 + sum(repair and step.repairable for step in self.steps)


@dataclass(frozen=True)
class JudgeProtocol:
    """How the benchmark's judge is asked. `per_answer`: each answer is scored alone
    (`messages(question, answer)`, a reply constrained by `constraint`), and an order's
    verdict is its two answers' scores; otherwise one call per order shows both answers
    (`messages(question, answer_1, answer_2)`) and the reply's first line holds both scores
    (judging.parse_scores)."""

    prefix: str  # of its version
    messages: Callable[..., list[Message]]
    per_answer: bool = False
    constraint: str | None = None


@dataclass(frozen=True)
class PromptProfile:
    name: str
    prefix: str  # of its version
    instructions: Phase  # phase 1: a new instruction and its answer
    responses: Phase  # phase 2: a better answer
    judge: JudgeProtocol

    @property
    def version(self) -> str:
        """The reflection prompts' version (see the module docstring)."""
        return _versioned(self.prefix, _phases_digest(self))

    @property
    def judge_version(self) -> str:
        return _versioned(self.judge.prefix, _judge_digest(self.judge))


# -- the versions ------------------------------------------------------------------------

# Fixed records the digests render: with and without an input, an answer to improve.
_PROBES = (
    Record("probe-a", "Name a colour.", "", "Red."),
    Record("probe-b", "Summarize the text.", "The shop opens at 9.", "It opens at 9."),
)
_EARLIER = {NEW_INSTRUCTION: "Name three colours and where each is seen.", NEW_ANSWER: "Red, green, blue."}


def _digest(parts: list[object]) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def _phases_digest(profile: PromptProfile) -> str:
    parts: list[object] = []
    for phase in (profile.instructions, profile.responses):
        for step in phase.steps:
            for record in _PROBES:
                messages = step.build(record, _EARLIER)
                parts.append([messages, step.sections, step.continues, list(step.stop), step.max_tokens])
                if step.repairable:
                    parts.append(prompts.repair(messages, "a reply", "a problem", step.sections))
                if step.finish is not None:
                    parts.append(step.finish(record, _EARLIER[NEW_INSTRUCTION]))
    return _digest(parts)


def _judge_digest(judge: JudgeProtocol) -> str:
    answers = ("Red.", "Blue, because the sky is blue.")
    if judge.per_answer:
        rendered = [judge.messages("Name a colour.", answer) for answer in answers]
    else:
        rendered = [judge.messages("Name a colour.", *answers)]
    return _digest([rendered, judge.per_answer, judge.constraint])


# The texts published under a name before versions were derived: their replies are cached
# and journaled under it. Never edit an entry; a new text gets its derived version.
PUBLISHED = {
    "7c7829ef09e8ea93d394be72d0ca55aac19bbb4df5f65df9eeaa8544e8431d89": "reflect-v1",
    "187517a6d9abe34ec400b2c6a048552b109fc94856b5bd13d1c944cb2b35da54": "reflect-compact-v1",
    "f8f80c548bb031b0dd722c98de4110c195136920c8e7e13f31240e902f004acb": "judge-v1",
    "3c80ed617ba2d784ed2cf9b405a51df66d4b6014d176985332cab3724519b50a": "judge-yes-v1",
}


def _versioned(prefix: str, digest: str) -> str:
    return PUBLISHED.get(digest) or f"{prefix}-{digest[:12]}"


# -- the two profiles --------------------------------------------------------------------

PAPER_PROFILE = PromptProfile(
    name=PAPER,
    prefix="reflect",
    instructions=Phase((
        Step(INSTRUCTION_SECTIONS, lambda r, _: prompts.instruction_reflection(r.instruction, r.input, r.output),
             repairable=True),
    )),
    responses=Phase((
        Step(RESPONSE_SECTIONS, lambda r, _: prompts.response_reflection(r.instruction, r.input, r.output),
             repairable=True),
    )),
    judge=JudgeProtocol("judge", judging.judge_messages),
)

_COMPACT_LIMITS = compact_prompts.MAX_TOKENS

COMPACT_PROFILE = PromptProfile(
    name=COMPACT,
    prefix="reflect-compact",
    instructions=Phase((
        Step((NEW_INSTRUCTION,), lambda r, _: compact_prompts.instruction_messages(r.instruction, r.input),
             continues=True, stop=compact_prompts.STOP, max_tokens=_COMPACT_LIMITS[NEW_INSTRUCTION],
             original=lambda r: r.instruction, finish=lambda r, text: compact_prompts.fold_input(text, r.input)),
        Step((NEW_ANSWER,),
             lambda r, found: compact_prompts.answer_messages(r.instruction, r.input, found[NEW_INSTRUCTION]),
             continues=True, stop=compact_prompts.STOP, max_tokens=_COMPACT_LIMITS[NEW_ANSWER]),
    )),
    responses=Phase((
        Step((BETTER_ANSWER,), lambda r, _: compact_prompts.response_messages(r.instruction, r.input, r.output),
             continues=True, stop=compact_prompts.STOP, max_tokens=_COMPACT_LIMITS[BETTER_ANSWER],
             original=lambda r: r.output),
    )),
    judge=JudgeProtocol("judge-yes", judging.compact_judge_messages, per_answer=True, constraint=YES_SCORE),
)

PROFILES: dict[str, PromptProfile] = {p.name: p for p in (PAPER_PROFILE, COMPACT_PROFILE)}


def resolve_profile(setting: str, default: str) -> str:
    """The profile a `prompts` setting names; `auto` is the backend's `default`
    (engines/oracle/kinds.py: compact for the local backend, paper for endpoints)."""
    if setting not in PROMPT_SETTINGS:
        raise SettingsError(f"prompts {setting!r}: expected one of {', '.join(PROMPT_SETTINGS)}")
    return default if setting == AUTO else setting


def profile(name: str) -> PromptProfile:
    return PROFILES[name]


def reflection_version(name: str) -> str:
    """The prompt version of the reflection phases under a profile."""
    return PROFILES[name].version


def judge_version(name: str) -> str:
    """The prompt version of the pairwise judge under a profile."""
    return PROFILES[name].judge_version
