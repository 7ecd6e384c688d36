"""The compact prompt profile: its prompts, the parse of a reply that continues an opened
section, and the compact judge's prompts. Replies are shaped as the embedded 135M model
writes them (ended by its end-of-turn token, seldom by [End], sometimes restating)."""

import pytest

from reflection_assets.engines.oracle.kinds import kind_of
from reflection_assets.engines.oracle.settings import OracleSettings
from reflection_assets.method import compact_prompts
from reflection_assets.method.judging import compact_judge_messages, parse_scores
from reflection_assets.method.parsing import Outcome, parse_continuation
from reflection_assets.method.profiles import resolve_profile


def test_profiles_resolve_by_backend():
    local, endpoint = kind_of("local").default_profile, kind_of("openai").default_profile
    assert resolve_profile("auto", local) == "compact"
    assert resolve_profile("auto", endpoint) == "paper"
    assert resolve_profile("compact", endpoint) == "compact"
    with pytest.raises(ValueError, match="expected one of auto, paper, compact"):
        resolve_profile("tiny", local)
    assert OracleSettings(backend="local").prompt_profile == "compact"
    assert OracleSettings(backend="openai", model="m").prompt_profile == "paper"


def test_compact_prompts_open_the_section_and_fold_the_input():
    messages = compact_prompts.instruction_messages("Summarize the text.", "The cat sat.")
    roles = [role for role, _ in messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]  # one worked example first
    assert messages[-1] == ("assistant", "[New Instruction]\n")
    assert messages[3][1] == "Instruction: Summarize the text.\nInput: The cat sat.\n(Put this input inside the new instruction.)\n"
    assert "Input: The library opens" in messages[1][1]  # the example with an input
    plain = compact_prompts.instruction_messages("Name a fruit.", "")
    assert plain[1][1] == "Instruction: Name a fruit.\n" and "Input" not in plain[3][1]
    follow = compact_prompts.answer_messages("Summarize the text.", "The cat sat.", "Summarize: The cat sat.")
    assert follow[:4] == messages[:4]
    assert follow[4] == ("assistant", "[New Instruction]\nSummarize: The cat sat.\n[End]\n[New Answer]\n")
    response = compact_prompts.response_messages("Name a fruit.", "", "Apple")
    assert [role for role, _ in response] == roles
    assert response[-1] == ("assistant", "[Better Answer]\n") and "Input:" not in response[3][1]
    assert response[3][1].startswith("Instruction: Name a fruit.\nAnswer: Apple\n\nWrite a better answer")
    assert compact_prompts.STOP == ("[End]",)
    assert sum(len(text) for _, text in messages) < 1000  # compact: the paper's prompt is about 1,500 characters


def test_the_input_is_folded_when_the_new_instruction_leaves_it_out():
    fold = compact_prompts.fold_input
    assert fold("Summarize the text in one sentence.", "The cat sat on the mat.") == (
        "Summarize the text in one sentence.\n\nThe cat sat on the mat."
    )
    carried = 'Summarize "The cat sat on the mat" and name the animal.'
    assert fold(carried, "The cat sat on the mat.") == carried
    assert fold("Name a fruit.", "") == "Name a fruit."


@pytest.mark.parametrize(
    ("reply", "finish", "body"),
    [
        ("Explain how tides form, naming the forces involved.", "stop", "Explain how tides form, naming the forces involved."),
        ("Explain how tides form.\n[End]\n[New Answer]\nTides are...", "stop", "Explain how tides form."),
        ("Explain how tides form. [End]", "length", "Explain how tides form."),
        ("[New Instruction]\nExplain how tides form.", "stop", "Explain how tides form."),  # restated marker
        ("**Explain how tides form.**", "stop", "Explain how tides form."),
        ("Explain tides.\n\n[New Answer] The moon pulls", "length", "Explain tides."),  # went on: next marker ends it
        ("Document the Endpoint API.", "stop", "Document the Endpoint API."),
    ],
)
def test_a_continuation_that_parses(reply, finish, body):
    parsed = parse_continuation(reply, "New Instruction", finish, original="Name a fruit.")
    assert parsed.outcome == Outcome.OK, parsed.reason
    assert parsed.sections == {"New Instruction": body}


@pytest.mark.parametrize(
    ("reply", "finish", "error", "outcome"),
    [
        ("Explain how tides form, naming the forces involved and", "length", None, Outcome.TRUNCATED),
        ("", "stop", None, Outcome.EMPTY),
        ("   \n[End]", "stop", None, Outcome.EMPTY),
        ("your new instruction", "stop", None, Outcome.TEMPLATE_ECHO),
        ("Name a fruit.", "stop", None, Outcome.TEMPLATE_ECHO),  # the original, unchanged
        ("name a  FRUIT", "stop", None, Outcome.TEMPLATE_ECHO),
        (None, None, "HTTP 500: boom", Outcome.ORACLE_ERROR),
    ],
)
def test_a_continuation_that_does_not(reply, finish, error, outcome):
    parsed = parse_continuation(reply, "New Instruction", finish, error, original="Name a fruit.")
    assert parsed.outcome == outcome
    assert parsed.sections == {}
    assert parsed.reason


def test_the_compact_judge_asks_about_one_answer_at_a_time():
    messages = compact_judge_messages("What is 2+2?", "4")
    assert [role for role, _ in messages] == ["system", "user"]  # the model's first token decides
    assert "[Question]\nWhat is 2+2?\n\n[Answer]\n4\n" in messages[1][1]
    assert "Reply Yes or No." in messages[1][1]
    assert "(no answer)" in compact_judge_messages("What is 2+2?", "  ")[1][1]
    # What the engine stores for an order, the two scores as shown, parses as the paper's first line.
    assert parse_scores("9 2") is not None and parse_scores("10 1").first == 10
