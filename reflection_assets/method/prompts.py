"""The paper profile's reflection prompts, in our own words, with the method's criteria and
section markers (the compact profile's are in compact_prompts.py).

Phase 1 (instruction reflection) critiques an instruction and its answer on the method's
criteria, then writes a harder, self-contained instruction and answers it. Phase 2
(response reflection) critiques an answer and writes a better one. Alpaca's `input` is
shown to the oracle in its own block; phase 1 asks for a new instruction that carries
whatever context it needs, so a reflected pair has no separate input.

Any change to these texts changes the requests, so the next run asks the oracle again for
every record (old replies stay cached under the old requests), and changes the profile's
version, derived from the text (method/profiles.py): the version is part of the oracle's
fingerprint, so the shards made with the old prompts become stale and the automation
re-runs them."""

from __future__ import annotations

from reflection_assets.method.requests import Message

NEW_INSTRUCTION = "New Instruction"
NEW_ANSWER = "New Answer"
BETTER_ANSWER = "Better Answer"
END = "End"

INSTRUCTION_CRITERIA = (
    "the complexity of the topic",
    "the level of detail it asks for",
    "the knowledge it requires",
    "how ambiguous it is",
    "the logical reasoning or problem solving it involves",
)
ANSWER_CRITERIA = ("helpfulness", "relevance", "accuracy", "level of detail")

SYSTEM = (
    "You are a helpful and precise assistant who checks the quality of instructions and "
    "answers used to teach AI assistants. You are picky: you notice what is vague, shallow, "
    "wrong or missing, and you fix it."
)


def _numbered(items: tuple[str, ...]) -> str:
    return "; ".join(f"({i}) {item}" for i, item in enumerate(items, start=1))


def _pair_blocks(instruction: str, input_text: str, answer: str) -> str:
    blocks = [f"[Instruction]\n{instruction}\n"]
    if input_text:
        blocks.append(f"[The Start of Input]\n{input_text}\n[The End of Input]\n")
    blocks.append(f"[The Start of Answer]\n{answer}\n[The End of Answer]\n")
    return "\n".join(blocks)


def instruction_reflection(instruction: str, input_text: str, answer: str) -> list[Message]:
    """Phase 1: critique, then [New Instruction] ... [End] and [New Answer] ... [End]."""
    input_note = (
        " The instruction came with the input shown above; your new instruction must include "
        "whatever part of that input it needs, because it will be used without a separate input."
        if input_text
        else ""
    )
    system_block = (
        "[System]\n"
        "We want a better instruction and a better answer for teaching an AI assistant.\n"
        "1. Explain why this instruction is not good enough, judging it on: "
        f"{_numbered(INSTRUCTION_CRITERIA)}. Then explain why the answer is not good enough "
        f"for it, judging it on: {_numbered(ANSWER_CRITERIA)}. Say how the weaknesses of the "
        "instruction led to the weaknesses of the answer.\n"
        "2. Write a new, complete instruction that is more challenging and more detailed, "
        "related to the original but answerable on its own." + input_note + " Put it between "
        f"[{NEW_INSTRUCTION}] and [{END}].\n"
        "3. Answer your new instruction as well and as completely as you can, between "
        f"[{NEW_ANSWER}] and [{END}].\n\n"
        "End your reply with exactly this layout:\n"
        f"[{NEW_INSTRUCTION}] your new instruction [{END}]\n"
        f"[{NEW_ANSWER}] your new answer [{END}]"
    )
    return [("system", SYSTEM), ("user", _pair_blocks(instruction, input_text, answer) + "\n" + system_block)]


def response_reflection(instruction: str, input_text: str, answer: str) -> list[Message]:
    """Phase 2: critique the answer, then [Better Answer] ... [End]. With an input block
    when the pair has one, without otherwise."""
    about = "the instruction and its input" if input_text else "the instruction"
    system_block = (
        "[System]\n"
        f"We want a better answer to {about} for teaching an AI assistant.\n"
        "1. Explain why this answer is not good enough, judging it on: "
        f"{_numbered(ANSWER_CRITERIA)}.\n"
        "2. Write a better answer: complete, accurate, detailed and directly useful, between "
        f"[{BETTER_ANSWER}] and [{END}].\n\n"
        "End your reply with exactly this layout:\n"
        f"[{BETTER_ANSWER}] your better answer [{END}]"
    )
    return [("system", SYSTEM), ("user", _pair_blocks(instruction, input_text, answer) + "\n" + system_block)]


def repair(messages: list[Message], reply: str, problem: str, sections: tuple[str, ...]) -> list[Message]:
    """A follow-up that shows the oracle its own reply and says exactly what was wrong."""
    layout = "\n".join(f"[{name}] ... [{END}]" for name in sections)
    return [
        *messages,
        ("assistant", reply),
        (
            "user",
            f"Your reply could not be used: {problem}. Reply again with only these sections, "
            f"each written out in full, no commentary:\n{layout}",
        ),
    ]
