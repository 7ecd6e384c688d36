"""A prompt profile is one value (method/profiles.py): the steps of each phase, the judge's
protocol, and versions derived from the text. The published texts keep their names (their
replies are cached under them); an edited text is a new version with nobody bumping one; the
engines never compare a profile's name."""

import re
from pathlib import Path

import pytest

from reflection_assets.method import compact_prompts, judging, prompts
from reflection_assets.method.profiles import COMPACT_PROFILE, PAPER_PROFILE, PROFILES, PUBLISHED
from reflection_assets.method.prompts import BETTER_ANSWER, NEW_ANSWER, NEW_INSTRUCTION
from reflection_assets.method.records import Record

PACKAGE = Path(__file__).resolve().parents[2] / "reflection_assets"


def test_the_published_texts_keep_their_versions():
    assert (PAPER_PROFILE.version, PAPER_PROFILE.judge_version) == ("reflect-v1", "judge-v1")
    assert (COMPACT_PROFILE.version, COMPACT_PROFILE.judge_version) == ("reflect-compact-v1", "judge-yes-v1")
    assert sorted(PUBLISHED.values()) == ["judge-v1", "judge-yes-v1", "reflect-compact-v1", "reflect-v1"]


@pytest.mark.parametrize(
    ("module", "name", "profile", "which"),
    [
        (prompts, "SYSTEM", PAPER_PROFILE, "version"),
        (compact_prompts, "RESPONSE_SYSTEM", COMPACT_PROFILE, "version"),
        (judging, "_USER", PAPER_PROFILE, "judge_version"),
        (judging, "_COMPACT_USER", COMPACT_PROFILE, "judge_version"),
    ],
)
def test_an_edited_text_is_a_new_version(monkeypatch, module, name, profile, which):
    before = getattr(profile, which)
    value = getattr(module, name)
    monkeypatch.setattr(module, name, value + " Be brief.")
    after = getattr(profile, which)
    assert after != before and re.fullmatch(rf"{before.rsplit('-v', 1)[0]}-[0-9a-f]{{12}}", after)
    monkeypatch.setattr(module, name, value)
    assert getattr(profile, which) == before  # the same text, the same version


def test_a_steps_limit_or_stop_is_part_of_the_version():
    import dataclasses

    step = COMPACT_PROFILE.responses.steps[0]
    for change in ({"max_tokens": step.max_tokens + 1}, {"stop": ("[Stop]",)}):
        edited = dataclasses.replace(
            COMPACT_PROFILE, responses=dataclasses.replace(COMPACT_PROFILE.responses, steps=(dataclasses.replace(step, **change),))
        )
        assert edited.version.startswith("reflect-compact-") and edited.version != COMPACT_PROFILE.version


def test_the_phases_steps_and_follow_ups():
    assert PAPER_PROFILE.instructions.sections == (NEW_INSTRUCTION, NEW_ANSWER)
    assert COMPACT_PROFILE.instructions.sections == (NEW_INSTRUCTION, NEW_ANSWER)
    assert PAPER_PROFILE.responses.sections == COMPACT_PROFILE.responses.sections == (BETTER_ANSWER,)
    # the most calls a record can need after its first: a repair, or the compact answer call
    assert [PAPER_PROFILE.instructions.follow_ups(r) for r in (False, True)] == [0, 1]
    assert [COMPACT_PROFILE.instructions.follow_ups(r) for r in (False, True)] == [1, 1]
    assert [COMPACT_PROFILE.responses.follow_ups(r) for r in (False, True)] == [0, 0]
    record = Record("r1", "Summarize the text.", "The cat sat.", "A cat sat.")
    first, second = COMPACT_PROFILE.instructions.steps
    assert first.build(record, {}) == compact_prompts.instruction_messages(record.instruction, record.input)
    assert first.original(record) == record.instruction and second.original(record) is None
    assert second.build(record, {NEW_INSTRUCTION: "Summarize it."})[-1][1].startswith("[New Instruction]\nSummarize it.")
    assert first.finish(record, "Summarize the text in a line.") == "Summarize the text in a line.\n\nThe cat sat."
    assert PAPER_PROFILE.judge.per_answer is False and COMPACT_PROFILE.judge.per_answer is True


def test_nothing_compares_a_profile_name_outside_the_profiles():
    pattern = re.compile(r"prompt_profile\s*[!=]=|[!=]=\s*(COMPACT|PAPER)\b|\b(COMPACT|PAPER)\s*[!=]=|[!=]=\s*[\"'](compact|paper)[\"']")
    assert pattern.search('if client.settings.prompt_profile == COMPACT:')  # the pattern sees one
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "profiles.py" and path.parent.name == "method":
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert found == []
    assert set(PROFILES) == {"paper", "compact"}
