"""Prompt profiles. `paper`: the method's prompts as published, critique first and sections
after, for oracles that follow long instructions (any capable endpoint). `compact`: the
same criteria in a few lines, no critique, the reply's section marker already written for
the model to continue, one section per call: what a small local model can follow (the
embedded 135M model echoes the paper prompt until max_tokens). `auto` picks compact for the
local backend and paper for endpoints. Pure: no I/O."""

from __future__ import annotations

from reflection_assets.errors import SettingsError

AUTO, PAPER, COMPACT = "auto", "paper", "compact"
PROMPT_SETTINGS = (AUTO, PAPER, COMPACT)


def resolve_profile(setting: str, default: str) -> str:
    """The profile a `prompts` setting names; `auto` is the backend's `default`
    (engines/oracle/kinds.py: compact for the local backend, paper for endpoints)."""
    if setting not in PROMPT_SETTINGS:
        raise SettingsError(f"prompts {setting!r}: expected one of {', '.join(PROMPT_SETTINGS)}")
    return default if setting == AUTO else setting


def reflection_version(profile: str) -> str:
    """The prompt version of the reflection phases under a profile."""
    from reflection_assets.method import compact_prompts, prompts

    return compact_prompts.COMPACT_VERSION if profile == COMPACT else prompts.PROMPT_VERSION


def judge_version(profile: str) -> str:
    """The prompt version of the pairwise judge under a profile."""
    from reflection_assets.method import judging

    return judging.COMPACT_JUDGE_VERSION if profile == COMPACT else judging.JUDGE_PROMPT_VERSION
