"""Every parse outcome and tolerance, on replies shaped like real oracle output."""

import pytest

from reflection_assets.method.parsing import (
    Outcome,
    parse_instruction_reply,
    parse_response_reply,
)
from reflection_assets.method.prompts import (
    instruction_reflection,
    repair,
    response_reflection,
)

GPT_STYLE = """1. Why the instruction is not good: "Give me a slogan" is vague. It names no product,
audience or tone, so the topic is trivial, no detail is required and no reasoning is involved.
Why the answer is not good: "Just do it." is an existing trademark, so it is neither
helpful nor original; it is not relevant to any stated product.

[New Instruction] Write three original slogans for a reusable water bottle made from
recycled steel, aimed at commuters. Each slogan must be under eight words, and for each one
explain in a sentence which benefit it highlights. [End]

[New Answer] 1. "Refill the commute." Highlights that the bottle fits a daily routine.
2. "Steel yourself for the day." Plays on the material and on resilience.
3. "Yesterday's cans, today's coffee." Points to the recycled steel. [End]"""


def test_a_well_formed_reply():
    parsed = parse_instruction_reply(GPT_STYLE, "stop")
    assert parsed.outcome == Outcome.OK
    assert parsed.sections["New Instruction"].startswith("Write three original slogans")
    assert parsed.sections["New Instruction"].endswith("which benefit it highlights.")
    assert parsed.sections["New Answer"].endswith("Points to the recycled steel.")


@pytest.mark.parametrize(
    "reply",
    [
        "Critique.\n**[New Instruction]**\nDo X well.\n**[End]**\n\n**[New Answer]**\nX, done well.\n**[End]**",
        "Critique.\n**New Instruction:** Do X well.\n\n**New Answer:** X, done well.",
        "Critique.\nNew Instruction: Do X well.\nNew Answer: X, done well.\n",
        "Critique.\n### New Instruction\nDo X well.\n\n### New Answer\nX, done well.",
        "Critique.\n[new instruction]   Do X well.   [END]\n\n\n[NEW ANSWER]\n\n   X, done well.  [end]  ",
        "Critique.\n> [New Instruction]: Do X well. [End]\n> [New Answer]: X, done well. [End]",
    ],
    ids=["bold-brackets", "bold-colon", "plain-colon", "headings", "case-and-space", "quoted"],
)
def test_markdown_and_marker_variants(reply):
    parsed = parse_instruction_reply(reply, "stop")
    assert parsed.outcome == Outcome.OK, parsed.reason
    assert parsed.sections == {"New Instruction": "Do X well.", "New Answer": "X, done well."}


NUMBERED = """1. The instruction is vague: it names no audience, and the answer is two words long.
2. [New Instruction] Explain to a first-year student how a hash table resolves collisions,
comparing chaining with open addressing on one example. [End]

3. [New Answer] A hash table maps keys to slots; two keys may land in the same slot. With
chaining, each slot holds a list. With open addressing, the table probes the next free slot. [End]"""


def test_a_reply_that_numbers_its_sections_as_the_prompt_does():
    parsed = parse_instruction_reply(NUMBERED, "stop")
    assert parsed.outcome == Outcome.OK, parsed.reason
    assert parsed.sections["New Instruction"].startswith("Explain to a first-year student")
    assert parsed.sections["New Instruction"].endswith("on one example.")
    assert parsed.sections["New Answer"].endswith("probes the next free slot.")


@pytest.mark.parametrize(
    "reply",
    [
        "1. Critique.\n2. [New Instruction] Do X well. [End]\n3. [New Answer] X, done well. [End]",
        "- Critique.\n- [New Instruction] Do X well. [End]\n- [New Answer] X, done well. [End]",
        "**1.** Critique.\n**2.** [New Instruction] Do X well. [End]\n**3.** [New Answer] X, done well. [End]",
        "1) Critique.\n2) New Instruction: Do X well.\n3) New Answer: X, done well.",
        "(1) Critique.\n(2) **New Instruction:** Do X well.\n(3) **New Answer:** X, done well.",
        "Step 1: critique.\nStep 2: [New Instruction] Do X well. [End]\nStep 3: [New Answer] X, done well. [End]",
        "1. Critique.\n\n2. **[New Instruction]**\nDo X well.\n[End]\n\n3. **[New Answer]**\nX, done well.\n[End]",
    ],
    ids=["dot", "bullet", "bold-number", "paren-colon", "paren-bold", "step", "number-then-block"],
)
def test_numbered_and_bulleted_markers(reply):
    parsed = parse_instruction_reply(reply, "stop")
    assert parsed.outcome == Outcome.OK, parsed.reason
    assert parsed.sections == {"New Instruction": "Do X well.", "New Answer": "X, done well."}


def test_numbered_markers_keep_every_protection():
    # The last marker wins over one quoted in a numbered critique line.
    quoted = "1. Your [New Answer] should be longer.\n2. [New Instruction] Do X. [End]\n3. [New Answer] X. [End]"
    assert parse_instruction_reply(quoted, "stop").sections == {"New Instruction": "Do X.", "New Answer": "X."}
    # "Endpoint" never cuts a numbered section.
    endpoint = "2. [New Instruction] Document the Endpoint API. [End]\n3. [New Answer] The Endpoint returns JSON."
    assert parse_instruction_reply(endpoint, "stop").sections["New Instruction"] == "Document the Endpoint API."
    # An echo of the layout is still an echo, a cut reply still cut.
    echo = "1. Critique.\n2. [New Instruction] your new instruction [End]\n3. [New Answer] your new answer [End]"
    assert parse_instruction_reply(echo, "stop").outcome == Outcome.TEMPLATE_ECHO
    cut = "1. Critique.\n2. [New Instruction] Do X. [End]\n3. [New Answer] The answer sta"
    assert parse_instruction_reply(cut, "length").outcome == Outcome.TRUNCATED
    assert parse_response_reply("1. Weak.\n2. [Better Answer] Much better. [End]", "stop").sections == {
        "Better Answer": "Much better."
    }


def test_missing_final_end_at_the_end_of_a_finished_reply_is_accepted():
    parsed = parse_instruction_reply("[New Instruction] Do X. [End]\n[New Answer] All of X.", "stop")
    assert parsed.outcome == Outcome.OK and parsed.sections["New Answer"] == "All of X."


def test_a_section_without_end_closes_at_the_next_marker():
    parsed = parse_instruction_reply("[New Instruction]\nDo X.\n[New Answer]\nAll of X.\n[End]", "stop")
    assert parsed.sections == {"New Instruction": "Do X.", "New Answer": "All of X."}


def test_bare_end_words_never_cut_a_section():
    reply = (
        "[New Instruction] Describe how to configure an API Endpoint and when a session should End. [End]\n"
        "[New Answer] An Endpoint is a URL. End users call it.\nEnd\nThe weekend is irrelevant. [End]"
    )
    parsed = parse_instruction_reply(reply, "stop")
    assert parsed.outcome == Outcome.OK
    assert parsed.sections["New Instruction"].endswith("when a session should End.")
    assert parsed.sections["New Answer"] == "An Endpoint is a URL. End users call it.\nEnd\nThe weekend is irrelevant."


def test_markers_repeated_in_the_critique_do_not_confuse_the_parse():
    reply = (
        "The original lacks detail. Below I give the [New Instruction] and the [New Answer].\n"
        "New Answer: should be the part the critique warns about.\n"
        "[New Instruction] Compare bubble sort and merge sort. [End]\n"
        "[New Answer] Merge sort runs in O(n log n); bubble sort in O(n^2). [End]"
    )
    parsed = parse_instruction_reply(reply, "stop")
    assert parsed.sections == {
        "New Instruction": "Compare bubble sort and merge sort.",
        "New Answer": "Merge sort runs in O(n log n); bubble sort in O(n^2).",
    }


def test_record_text_with_marker_like_words_inside_a_sentence():
    reply = (
        "[New Instruction] Explain why a template that writes [End] after each answer, and "
        "labels like [New Answer] inside sentences, confuse naive parsers. [End]\n"
        "[New Answer] Because a regex that stops at [End] anywhere cuts the text short. "
        "A robust parser only accepts it at a line's end. [End]"
    )
    parsed = parse_instruction_reply(reply, "stop")
    assert parsed.outcome == Outcome.OK
    assert "labels like [New Answer] inside sentences" in parsed.sections["New Instruction"]
    assert parsed.sections["New Answer"].endswith("only accepts it at a line's end.")


def test_missing_marker():
    parsed = parse_instruction_reply("The instruction is fine. Write a poem about rain.", "stop")
    assert parsed.outcome == Outcome.MISSING_MARKER and "[New Answer]" in parsed.reason
    only_answer = parse_instruction_reply("Critique.\n[New Answer] Something. [End]", "stop")
    assert only_answer.outcome == Outcome.MISSING_MARKER and "[New Instruction]" in only_answer.reason


@pytest.mark.parametrize(
    "reply",
    [
        "[New Instruction] your new instruction [End]\n[New Answer] your new answer [End]",
        "[New Instruction] Your instruction here. [End]\n[New Answer] Fine. [End]",
        "[New Instruction] <new instruction> [End]\n[New Answer] <answer> [End]",
        "[New Instruction] ... [End]\n[New Answer] ... [End]",
    ],
)
def test_template_echo(reply):
    assert parse_instruction_reply(reply, "stop").outcome == Outcome.TEMPLATE_ECHO


def test_truncated_by_max_tokens():
    inside = parse_instruction_reply("[New Instruction] Do X. [End]\n[New Answer] The first half of", "length")
    assert inside.outcome == Outcome.TRUNCATED and "inside [New Answer]" in inside.reason
    before = parse_instruction_reply("A long critique that never reaches the sections because", "length")
    assert before.outcome == Outcome.TRUNCATED and "before [New Answer]" in before.reason
    # a reply that hit the limit right after its last [End] is complete
    complete = parse_instruction_reply("[New Instruction] Do X. [End]\n[New Answer] All. [End]", "length")
    assert complete.outcome == Outcome.OK


def test_empty():
    assert parse_instruction_reply("", "stop").outcome == Outcome.EMPTY
    assert parse_instruction_reply("  \n ", "stop").outcome == Outcome.EMPTY
    blank = parse_instruction_reply("[New Instruction] Do X. [End]\n[New Answer]\n[End]", "stop")
    assert blank.outcome == Outcome.EMPTY and "[New Answer]" in blank.reason


def test_oracle_error():
    parsed = parse_instruction_reply(None, None, error="HTTP 401: bad key")
    assert parsed.outcome == Outcome.ORACLE_ERROR and parsed.reason == "HTTP 401: bad key"


def test_response_reflection_reply():
    reply = (
        "The answer is correct but terse: it lacks detail and helpfulness.\n\n"
        "[Better Answer] The capital of Australia is Canberra, chosen in 1908 as a compromise "
        "between Sydney and Melbourne. [End]"
    )
    parsed = parse_response_reply(reply, "stop")
    assert parsed.outcome == Outcome.OK and parsed.sections["Better Answer"].startswith("The capital")
    assert parse_response_reply("**Better Answer:**\nCanberra.", "stop").sections == {"Better Answer": "Canberra."}
    assert parse_response_reply("Only a critique.", "stop").outcome == Outcome.MISSING_MARKER


def test_instruction_prompt_has_the_criteria_markers_and_input_block():
    system, user = instruction_reflection("Summarize.", "A long text.", "Short.")
    assert system[0] == "system" and "picky" in system[1]
    text = user[1]
    for needle in (
        "[Instruction]\nSummarize.", "[The Start of Input]\nA long text.\n[The End of Input]",
        "[The Start of Answer]\nShort.\n[The End of Answer]", "[System]",
        "complexity of the topic", "level of detail", "knowledge", "ambiguous", "logical reasoning",
        "helpfulness", "relevance", "accuracy", "[New Instruction]", "[New Answer]", "[End]",
        "without a separate input",
    ):
        assert needle in text, needle
    _, no_input = instruction_reflection("Summarize.", "", "Short.")
    assert "[The Start of Input]" not in no_input[1] and "without a separate input" not in no_input[1]


def test_response_prompt_variants_and_repair():
    _, with_input = response_reflection("Translate.", "Bonjour", "Hi")
    _, without = response_reflection("Say hi.", "", "Hi")
    assert "[The Start of Input]\nBonjour" in with_input[1] and "its input" in with_input[1]
    assert "[The Start of Input]" not in without[1] and "[Better Answer]" in without[1]
    messages = response_reflection("Say hi.", "", "Hi")
    follow_up = repair(messages, "just a critique", "no [Better Answer] section", ("Better Answer",))
    assert follow_up[:2] == messages and follow_up[2] == ("assistant", "just a critique")
    assert "no [Better Answer] section" in follow_up[3][1] and "[Better Answer] ... [End]" in follow_up[3][1]
