"""A scripted reflection oracle for the fake server: well-formed phase 1, phase 2 and
repair replies, and failures chosen by tags in the record's instruction:
  #missing   phase 1 replies without markers, every time (repair fails too)
  #fixable   phase 1 replies without markers, but the repair call answers properly
  #echo      phase 1 echoes the template
  #truncate  phase 1 is cut by max_tokens (see `plan`)
  #reject    phase 1 gets HTTP 400
A reply names the model that wrote it, so tests can tell oracles apart."""

from __future__ import annotations

import re


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def pair_of(prompt: str) -> tuple[str, str]:
    instruction = _between(prompt, "[Instruction]\n", "\n\n[The Start of")
    answer = _between(prompt, "[The Start of Answer]\n", "\n[The End of Answer]")
    return instruction, answer


def respond(body: dict) -> str:
    model = body["model"]
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    instruction, answer = pair_of(first_user)
    is_repair = body["messages"][-1]["role"] == "user" and "could not be used" in body["messages"][-1]["content"]
    if "[New Instruction]" in first_user:
        if not is_repair and ("#missing" in instruction or "#fixable" in instruction):
            return "The instruction is weak and the answer is short. I would ask for more detail."
        if is_repair and "#missing" in instruction:
            return "Still no sections, sorry."
        if "#echo" in instruction and not is_repair:
            return "Critique.\n[New Instruction] your new instruction [End]\n[New Answer] your new answer [End]"
        clean = re.sub(r"\s*#\w+", "", instruction)
        return (
            "The instruction lacks detail and the answer is shallow.\n\n"
            f"[New Instruction] {clean} Explain your reasoning step by step. ({model}) [End]\n"
            f"[New Answer] A detailed answer to: {clean} ({model}) [End]"
        )
    return f"The answer lacks detail.\n\n[Better Answer] A better answer than '{answer}' ({model}). [End]"


def plan(body: dict, nth: int) -> object:
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    instruction, _ = pair_of(first_user)
    if "[New Instruction]" in first_user and "#reject" in instruction:
        return ("status", 400, "This model's maximum context length is 4096 tokens")
    if "[New Instruction]" in first_user and "#truncate" in instruction and len(body["messages"]) == 2:
        return "length"
    return "ok"
