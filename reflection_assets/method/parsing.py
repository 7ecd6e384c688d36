"""Parsing oracle replies into sections, with an outcome for every reply. Pure.

Rules, written against what real oracles do:
- A section starts at a marker at the start of a line: `[New Answer]`, `**[New Answer]**`,
  `New Answer:`, `**New Answer:**`, `### New Answer`, also numbered or bulleted as the
  prompt's own numbered steps invite (`3. [New Answer]`, `**2.** [New Instruction]`,
  `2) New Instruction:`, `- [New Answer]`). Markers mentioned inside a sentence
  (a critique saying "the [New Answer] below") are not section starts; when a marker
  starts several lines, the last one before the next section's marker wins, because the
  critique comes first.
- A section ends at `[End]` standing at the start or the end of a line, at the next
  section's marker, or at the end of the text. `[End]` inside a sentence and bare words
  such as "End" or "Endpoint" never end a section.
- A reply cut by max_tokens (finish_reason "length") before its last section ended is
  `truncated`; a last section that runs to the end of a finished reply is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from reflection_assets.method.prompts import BETTER_ANSWER, NEW_ANSWER, NEW_INSTRUCTION


class Outcome:
    OK = "ok"
    MISSING_MARKER = "missing_marker"
    TEMPLATE_ECHO = "template_echo"
    TRUNCATED = "truncated"
    EMPTY = "empty"
    ORACLE_ERROR = "oracle_error"


ALL_OUTCOMES = (
    Outcome.OK,
    Outcome.MISSING_MARKER,
    Outcome.TEMPLATE_ECHO,
    Outcome.TRUNCATED,
    Outcome.EMPTY,
    Outcome.ORACLE_ERROR,
)
# Outcomes a follow-up call that shows the oracle its reply may fix.
REPAIRABLE = frozenset({Outcome.MISSING_MARKER, Outcome.TEMPLATE_ECHO, Outcome.TRUNCATED, Outcome.EMPTY})


@dataclass(frozen=True)
class Parsed:
    outcome: str
    sections: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == Outcome.OK


_DECOR = r"[ \t>*_#-]*"  # markdown around a marker: quotes, bold, italics, headings, bullets
# A step number before a marker, as replies that follow the prompt's numbered steps write it:
# "3.", "2)", "(2)", "Step 3:", "**2.**".
_NUMBER = rf"(?:(?:step\s+)?\d{{1,2}}\s*[.):]|\(\d{{1,2}}\)){_DECOR}"


def _start_pattern(name: str) -> re.Pattern[str]:
    words = r"\s+".join(map(re.escape, name.split()))
    return re.compile(
        rf"^{_DECOR}(?:{_NUMBER})?(?:\[\s*{words}\s*\]|{words}\s*:|{words}[ \t*_]*$)[ \t*_]*:?[ \t*_]*",
        re.IGNORECASE | re.MULTILINE,
    )


_END = re.compile(
    rf"(?:^{_DECOR}\[\s*end\s*\][ \t*_]*|[ \t*_]*\[\s*end\s*\][ \t*_.]*$)",
    re.IGNORECASE | re.MULTILINE,
)
_PLACEHOLDER_ONLY = re.compile(
    r"^\W*(?:(?:your|the|a)\s+)?(?:(?:new|better|improved)\s+)?(?:instruction|answer|response)"
    r"(?:\s+(?:here|goes here))?\W*$",
    re.IGNORECASE,
)
_PLACEHOLDER_PHRASE = re.compile(
    r"your (?:new |better |improved )?(?:instruction|answer|response)(?: here| goes here)?\b|^<[^<>]{0,40}>$",
    re.IGNORECASE,
)
_STARTS = {name: _start_pattern(name) for name in (NEW_INSTRUCTION, NEW_ANSWER, BETTER_ANSWER)}


def _is_placeholder(text: str) -> bool:
    stripped = text.strip()
    if not re.search(r"\w", stripped):  # "..." copied from the layout
        return True
    return bool(_PLACEHOLDER_ONLY.match(stripped)) or (
        len(stripped) < 60 and bool(_PLACEHOLDER_PHRASE.search(stripped))
    )


def _clean(text: str) -> str:
    return text.strip().strip("*_").strip()


def parse_sections(
    text: str | None, names: tuple[str, ...], finish_reason: str | None = None, error: str | None = None
) -> Parsed:
    """Extract `names`, in order, from a reply. Keys of `sections` are the names."""
    if error is not None or text is None:
        return Parsed(Outcome.ORACLE_ERROR, reason=error or "no reply")
    if not text.strip():
        return Parsed(Outcome.EMPTY, reason="the reply was empty")
    cut = finish_reason == "length"

    # Choose each marker from the last section backwards: the last occurrence of the last
    # section, then the last occurrence of each earlier section before the one after it.
    chosen: dict[str, re.Match[str]] = {}
    limit = len(text)
    for name in reversed(names):
        matches = [m for m in _STARTS[name].finditer(text) if m.start() < limit]
        if not matches:
            if cut:
                return Parsed(Outcome.TRUNCATED, reason=f"cut off by max_tokens before [{name}]")
            return Parsed(Outcome.MISSING_MARKER, reason=f"no [{name}] section")
        chosen[name] = matches[-1]
        limit = matches[-1].start()

    sections: dict[str, str] = {}
    for index, name in enumerate(names):
        begin = chosen[name].end()
        stop = chosen[names[index + 1]].start() if index + 1 < len(names) else len(text)
        end = _END.search(text, begin, stop)
        body = _clean(text[begin : end.start() if end else stop])
        last = index + 1 == len(names)
        if last and end is None and cut:
            return Parsed(Outcome.TRUNCATED, sections, reason=f"cut off by max_tokens inside [{name}]")
        if not body:
            return Parsed(Outcome.EMPTY, sections, reason=f"the [{name}] section is empty")
        if _is_placeholder(body):
            return Parsed(Outcome.TEMPLATE_ECHO, sections, reason=f"[{name}] repeats the template: {body[:60]!r}")
        sections[name] = body
    return Parsed(Outcome.OK, sections)


INSTRUCTION_SECTIONS = (NEW_INSTRUCTION, NEW_ANSWER)
RESPONSE_SECTIONS = (BETTER_ANSWER,)


def parse_instruction_reply(text: str | None, finish_reason: str | None = None, error: str | None = None) -> Parsed:
    return parse_sections(text, INSTRUCTION_SECTIONS, finish_reason, error)


def parse_response_reply(text: str | None, finish_reason: str | None = None, error: str | None = None) -> Parsed:
    return parse_sections(text, RESPONSE_SECTIONS, finish_reason, error)


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.lower().split()).strip(" .") == " ".join(b.lower().split()).strip(" .")


def parse_continuation(
    text: str | None,
    section: str,
    finish_reason: str | None = None,
    error: str | None = None,
    original: str | None = None,
) -> Parsed:
    """A reply that continues an opened section (the compact profile): its body runs to
    [End] (which the stop usually removed already), to the next section's marker, or to the
    end of a finished reply. A reply cut by max_tokens before any of those is `truncated`;
    one that repeats `original` unchanged, or the placeholder, is `template_echo`."""
    if error is not None or text is None:
        return Parsed(Outcome.ORACLE_ERROR, reason=error or "no reply")
    body = text
    opened = _STARTS[section].match(body.lstrip())  # an endpoint that restated the marker
    if opened:
        body = body.lstrip()[opened.end():]
    ends = [m.start() for m in [_END.search(body)] if m]
    ends += [m.start() for name, start in _STARTS.items() if name != section for m in [start.search(body)] if m]
    ended = bool(ends)
    body = _clean(body[: min(ends)] if ends else body)
    if not body:
        return Parsed(Outcome.EMPTY, reason=f"the [{section}] section is empty")
    if not ended and finish_reason == "length":
        return Parsed(Outcome.TRUNCATED, reason=f"cut off by max_tokens inside [{section}]")
    if _is_placeholder(body):
        return Parsed(Outcome.TEMPLATE_ECHO, reason=f"[{section}] repeats the template: {body[:60]!r}")
    if original is not None and _same_text(body, original):
        return Parsed(Outcome.TEMPLATE_ECHO, reason=f"[{section}] repeats the original unchanged")
    return Parsed(Outcome.OK, {section: body})
