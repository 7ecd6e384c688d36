"""The compact prompt profile: the reflection phases for a small local model, in our own
words. The same criteria as the paper's prompts, in a sentence, no critique; the assistant
turn already begins with the section marker and the model continues it, stopping at [End]
(or its end of turn); phase 1 is two calls, the new instruction, then its answer with the
instruction and `[New Answer]` written for the model. Pure: no I/O.

Measured on the embedded SmolLM2-135M (sample records): a short system and user prompt
alone gave 7-9 usable new instructions in 32; one worked example shown as an earlier turn of
the chat gave 18 in 32 (two examples: 17, and the examples' tasks leaked into the output).
For better answers the example also teaches length: 26 of 32 finished within 128 tokens
with it, 17 without (the rest loop until cut).
The model folds an Alpaca input into its new instruction only about a third of the time, so
the input is folded here when the new instruction does not carry it.

The version, derived from these texts (method/profiles.py), is part of every request and of
the oracle fingerprint, as the paper's is."""

from __future__ import annotations

import re

from reflection_assets.method.prompts import BETTER_ANSWER, END, NEW_ANSWER, NEW_INSTRUCTION
from reflection_assets.method.requests import Message

STOP = (f"[{END}]",)
# Reply limits per section, in tokens (capped by the oracle's max_tokens). Measured on the
# embedded model: 96 tokens let 87% of new instructions and 92% of their answers finish;
# with its example, 81% of better answers finish in 128 (75% in 96; the rest loop).
MAX_TOKENS = {NEW_INSTRUCTION: 96, NEW_ANSWER: 96, BETTER_ANSWER: 128}

INSTRUCTION_SYSTEM = (
    "You rewrite instructions for AI assistants to make them harder. A better instruction is "
    "more complex, asks for more detail, needs more knowledge and reasoning, and is not "
    "ambiguous. Write only the new instruction, never its answer."
)
RESPONSE_SYSTEM = (
    "You improve answers written by AI assistants. A better answer is more helpful, relevant, "
    "accurate and detailed."
)
# The worked examples shown before each record (phase 1: one with an input for records that
# have one).
EXAMPLE = ("Name a fruit.", "", "Name three tropical fruits and, for each one, explain where it is grown and how it is usually eaten.")
EXAMPLE_WITH_INPUT = (
    "Summarize the text.",
    "The library opens at 9 am and closes at 5 pm on weekdays.",
    'Summarize the text "The library opens at 9 am and closes at 5 pm on weekdays, but stays open '
    'until 8 pm on Thursdays." in one sentence, then list the opening hours for each day.',
)
RESPONSE_EXAMPLE = (
    "Name a fruit.",
    "",
    "Apple.",
    "A banana is a tropical fruit grown in warm countries such as India and Ecuador. It is sweet, "
    "rich in potassium, and usually eaten raw or blended into smoothies.",
)


def _task(instruction: str, input_text: str) -> str:
    text = f"Instruction: {instruction}\n"
    if input_text:
        text += f"Input: {input_text}\n(Put this input inside the new instruction.)\n"
    return text


def _opened(section: str) -> str:
    return f"[{section}]\n"


def instruction_messages(instruction: str, input_text: str) -> list[Message]:
    """Phase 1, first call: the new instruction (the reply continues `[New Instruction]`)."""
    example, example_input, example_new = EXAMPLE_WITH_INPUT if input_text else EXAMPLE
    return [
        ("system", INSTRUCTION_SYSTEM),
        ("user", _task(example, example_input)),
        ("assistant", f"{_opened(NEW_INSTRUCTION)}{example_new}\n[{END}]"),
        ("user", _task(instruction, input_text)),
        ("assistant", _opened(NEW_INSTRUCTION)),
    ]


def answer_messages(instruction: str, input_text: str, new_instruction: str) -> list[Message]:
    """Phase 1, second call: the new instruction's answer, the instruction written for the
    model and `[New Answer]` opened."""
    *head, (_, opened) = instruction_messages(instruction, input_text)
    return [*head, ("assistant", f"{opened}{new_instruction}\n[{END}]\n{_opened(NEW_ANSWER)}")]


def _answer_task(instruction: str, input_text: str, answer: str) -> str:
    input_line = f"Input: {input_text}\n" if input_text else ""
    return (
        f"Instruction: {instruction}\n{input_line}Answer: {answer}\n\n"
        "Write a better answer to the instruction: complete, accurate, detailed and directly "
        "useful. Write only the answer."
    )


def response_messages(instruction: str, input_text: str, answer: str) -> list[Message]:
    """Phase 2: a better answer (the reply continues `[Better Answer]`), after one example."""
    example, example_input, example_answer, example_better = RESPONSE_EXAMPLE
    return [
        ("system", RESPONSE_SYSTEM),
        ("user", _answer_task(example, example_input, example_answer)),
        ("assistant", f"{_opened(BETTER_ANSWER)}{example_better}\n[{END}]"),
        ("user", _answer_task(instruction, input_text, answer)),
        ("assistant", _opened(BETTER_ANSWER)),
    ]


_WORD = re.compile(r"\w+")


def fold_input(new_instruction: str, input_text: str) -> str:
    """The new instruction with the record's input appended, unless it already carries at
    least half of the input's words: a reflected pair has no separate input."""
    words = {w.lower() for w in _WORD.findall(input_text)}
    if not words:
        return new_instruction
    present = {w.lower() for w in _WORD.findall(new_instruction)}
    if len(words & present) >= len(words) / 2:
        return new_instruction
    return f"{new_instruction}\n\n{input_text}"
