"""The student's prompt layouts: one formatter for what the student is trained on
(engines/student/training.py), what it answers in the benchmark (engines/benchmark/answers.py) and what V2's
scoring reads (engines/selection/ifd.py), so that the three see a pair the same way.

A layout turns (instruction, input) into the text the student reads before its response:

- `chat`: the model's own chat template around one user turn holding the instruction, then
  the input after a blank line (`user_turn`);
- `vicuna`: the official code's Vicuna prompt (the paper's students'): the system sentence,
  `USER: {instruction} ASSISTANT:`, or with an input `USER: {instruction}\\nInput:\\n{input}
  ASSISTANT:`;
- `alpaca`, `wizardlm`: the official selection code's other two templates.

The three templated layouts are the strings of the official selection code
(tianyi-lab/Reflection_Tuning, data_analysis.py: PROMPT_DICT_VICUNA, _ALPACA, _WIZARDLM)."""

from __future__ import annotations

from collections.abc import Callable

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)
TEMPLATES: dict[str, dict[str, str]] = {
    "vicuna": {
        "prompt_input": VICUNA_SYSTEM + " USER: {instruction}\nInput:\n{input} ASSISTANT:",
        "prompt_no_input": VICUNA_SYSTEM + " USER: {instruction} ASSISTANT:",
    },
    "alpaca": {
        "prompt_input": (
            "Below is an instruction that describes a task, paired with an input that provides further context. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
        ),
        "prompt_no_input": (
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Response:"
        ),
    },
    "wizardlm": {
        "prompt_input": "{instruction}\n{input}\n\n### Response:",
        "prompt_no_input": "{instruction}\n\n### Response:",
    },
}
LAYOUTS = (*TEMPLATES, "chat")


def user_turn(instruction: str, input_text: str) -> str:
    """The chat layout's user message (and an exported pair's prompt): the instruction, then
    the input after a blank line."""
    return instruction + (f"\n\n{input_text}" if input_text else "")


def render(layout: str, instruction: str, input_text: str = "", chat: Callable[[str], str] | None = None) -> str:
    """The text before the response. `chat` applies the model's chat template to a user
    message (with the assistant's turn opened); the chat layout needs it."""
    if layout == "chat":
        if chat is None:
            raise ValueError("the chat layout needs the model's chat template")
        return chat(user_turn(instruction, input_text))
    if layout not in TEMPLATES:
        raise ValueError(f"template {layout!r}: expected one of {', '.join(LAYOUTS)}")
    forms = TEMPLATES[layout]
    if input_text == "":
        return forms["prompt_no_input"].format_map({"instruction": instruction})
    return forms["prompt_input"].format_map({"instruction": instruction, "input": input_text})


def chat_template_of(tokenizer) -> Callable[[str], str]:
    """`render`'s `chat` for a transformers tokenizer."""
    return lambda user: tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
    )
