"""Records: turning one source row into a normalized (instruction, input, output) triple
with a stable id and shard, or into a reason why it cannot be used. Pure: no I/O."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reflection_assets.method.digests import text_digest

# Bumped whenever normalize_text or record_id change meaning: it is part of the key under
# which a parsed source is cached, so a change re-parses instead of mixing old and new ids.
NORMALIZATION_VERSION = "1"

# Field aliases, in priority order: the first one present in a row wins.
INSTRUCTION_FIELDS = ("instruction", "prompt", "question")
INPUT_FIELDS = ("input", "context")
OUTPUT_FIELDS = ("output", "response", "answer")
CONVERSATION_FIELDS = ("conversations", "messages")
USER_ROLES = frozenset({"user", "human"})
ASSISTANT_ROLES = frozenset({"assistant", "gpt", "bot", "model"})

DEFAULT_MAX_RECORD_CHARS = 100_000

# Lone surrogates appear where a file's bytes were not valid UTF-8 (decoded with
# surrogateescape) or where JSON escaped half a surrogate pair.
_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE_BREAKS = re.compile(r"\r\n?")


class RejectReason:
    """Why a source row was not kept. Values are stored in the database as they are."""

    MISSING_INSTRUCTION = "missing_instruction"
    MISSING_RESPONSE = "missing_response"
    NOT_TEXT = "not_text"
    NOT_A_RECORD = "not_a_record"
    TOO_LONG = "too_long"
    UNDECODABLE = "undecodable_bytes"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Record:
    """One instruction/response pair with its stable id: what ingestion makes of a source
    row, and what each reflection phase reads and rewrites."""

    record_id: str
    instruction: str
    input: str
    output: str


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    detail: str


def normalize_text(text: str) -> str:
    """Unicode NFC, LF line endings, no surrounding whitespace."""
    return unicodedata.normalize("NFC", _LINE_BREAKS.sub("\n", text)).strip()


def record_id(instruction: str, input_text: str, output: str) -> str:
    """A stable 16-hex-digit id: sha256 of the normalized fields, unit-separated."""
    return text_digest("\x1f".join((instruction, input_text, output)), 16)


def shard_of(identifier: str, shard_count: int) -> int:
    """Stable shard of a record id (or any hex digest): its value mod shard_count."""
    return int(identifier[:16], 16) % shard_count


def reject_shard(source_row: int, shard_count: int) -> int:
    """Rows without an id still belong to one shard, so each shard reports its rejects."""
    return shard_of(text_digest(f"row:{source_row}"), shard_count)


def shard_keys(shard_count: int) -> list[str]:
    width = max(2, len(str(shard_count - 1)))
    return [str(i).zfill(width) for i in range(shard_count)]


def _pick(row: Mapping[str, object], names: Sequence[str]) -> tuple[str | None, object]:
    for name in names:
        if name in row:
            return name, row[name]
    return None, None


def _from_conversation(turns: object, field: str) -> dict[str, object] | Rejected:
    if not isinstance(turns, list):
        return Rejected(RejectReason.NOT_A_RECORD, f"field '{field}' is not a list of turns")
    instruction: object = None
    output: object = None
    for turn in turns:
        if not isinstance(turn, Mapping):
            return Rejected(RejectReason.NOT_A_RECORD, f"a turn in '{field}' is not an object")
        role = str(turn.get("role", turn.get("from", ""))).lower()
        content = turn.get("content", turn.get("value"))
        if instruction is None and role in USER_ROLES:
            instruction = content
        elif instruction is not None and role in ASSISTANT_ROLES:
            output = content
            break
    return {"instruction": instruction, "input": "", "output": output}


def to_record(
    row: object,
    field_map: Mapping[str, str] | None = None,
    max_record_chars: int = DEFAULT_MAX_RECORD_CHARS,
) -> Record | Rejected:
    """Map one parsed source row to a Record, or say why it cannot be used.

    field_map overrides the aliases: {"instruction": "Question", "output": "Best answer"}.
    Conversations (ShareGPT `conversations` or OpenAI `messages`) give the first user turn
    as the instruction and the first assistant turn after it as the output.
    """
    if not isinstance(row, Mapping):
        return Rejected(RejectReason.NOT_A_RECORD, f"expected an object, got {type(row).__name__}")
    field_map = field_map or {}
    conv_name, turns = _pick(row, CONVERSATION_FIELDS)
    has_flat = any(name in row for name in INSTRUCTION_FIELDS) or "instruction" in field_map
    if conv_name is not None and not has_flat:
        mapped = _from_conversation(turns, conv_name)
        if isinstance(mapped, Rejected):
            return mapped
        names = {"instruction": f"{conv_name}[user]", "input": "input", "output": f"{conv_name}[assistant]"}
    else:
        mapped, names = {}, {}
        for role, aliases in (
            ("instruction", INSTRUCTION_FIELDS),
            ("input", INPUT_FIELDS),
            ("output", OUTPUT_FIELDS),
        ):
            wanted = (field_map[role],) if role in field_map else aliases
            name, value = _pick(row, wanted)
            mapped[role], names[role] = value, name or "/".join(wanted)

    texts: dict[str, str] = {}
    for role in ("instruction", "input", "output"):
        value = mapped[role]
        if value is None:
            value = ""
        if not isinstance(value, str):
            return Rejected(
                RejectReason.NOT_TEXT,
                f"field '{names[role]}' is {type(value).__name__}, expected text",
            )
        if _SURROGATE.search(value):
            return Rejected(
                RejectReason.UNDECODABLE, f"field '{names[role]}' holds bytes that are not valid UTF-8"
            )
        texts[role] = normalize_text(value)

    if not texts["instruction"]:
        return Rejected(RejectReason.MISSING_INSTRUCTION, f"no text in '{names['instruction']}'")
    if not texts["output"]:
        return Rejected(RejectReason.MISSING_RESPONSE, f"no text in '{names['output']}'")
    size = sum(len(t) for t in texts.values())
    if size > max_record_chars:
        return Rejected(
            RejectReason.TOO_LONG, f"{size} characters, over the limit of {max_record_chars}"
        )
    return Record(
        record_id(texts["instruction"], texts["input"], texts["output"]),
        texts["instruction"],
        texts["input"],
        texts["output"],
    )
