"""Running a reflection phase over many pairs through the oracle client: build every
request, send them all at once (the client streams, caches and retries), parse each reply,
and give the ones that failed to parse a single follow-up call that says what was wrong.
A pair is replaced only when every section it needs parsed; otherwise it stays as it was
and the outcome says why.

Two prompt profiles (method/profiles.py): `paper`, one call per record and phase with every
section in it; `compact`, one call per section, each continuing its opened marker (phase 1:
the new instruction, then its answer)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.oracle.replies import OracleReply
from reflection_assets.method import compact_prompts, prompts
from reflection_assets.method.parsing import (
    INSTRUCTION_SECTIONS,
    REPAIRABLE,
    RESPONSE_SECTIONS,
    Outcome,
    Parsed,
    parse_continuation,
    parse_sections,
)
from reflection_assets.method.profiles import COMPACT, reflection_version
from reflection_assets.method.prompts import (
    BETTER_ANSWER,
    NEW_ANSWER,
    NEW_INSTRUCTION,
    instruction_reflection,
    repair,
    response_reflection,
)
from reflection_assets.method.records import Record
from reflection_assets.method.requests import Message


@dataclass(frozen=True)
class PhaseResult:
    pair: Record
    request_key: str
    repair_key: str | None
    outcome: str
    reason: str
    repaired: bool
    sections: dict[str, str]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    finish_reason: str | None
    answer_key: str | None = None  # compact phase 1: the second call, the new answer

    @property
    def ok(self) -> bool:
        return self.outcome == Outcome.OK


def repair_calls(setting: str, default: bool) -> bool:
    """Whether a reply that failed to parse gets one follow-up call (the stages' `repair`
    setting): `auto` is the backend's `repair_default` (engines/oracle/kinds.py: on for
    endpoints, off for the embedded model, whose failed replies are echo loops that a second
    call does not fix)."""
    if setting == "auto":
        return default
    return setting == "on"


def prompt_version(client: OracleClient) -> str:
    """The version of the prompts the client's profile uses: part of every request and of
    the oracle fingerprint."""
    return reflection_version(client.settings.prompt_profile)


def _parse(reply: OracleReply, sections: tuple[str, ...]) -> Parsed:
    return parse_sections(reply.text, sections, reply.finish_reason, reply.error)


def _usage(*replies: OracleReply | None) -> tuple[int, int, float]:
    present = [r for r in replies if r is not None]
    return (
        sum(r.prompt_tokens for r in present),
        sum(r.completion_tokens for r in present),
        sum(r.cost_usd for r in present),
    )


def run_phase(
    client: OracleClient,
    pairs: Sequence[Record],
    build: Callable[[Record], list[Message]],
    sections: tuple[str, ...],
    repair_failures: bool = True,
    prompt_version: str | None = None,
) -> list[PhaseResult]:
    prompt_version = prompt_version or prompts.PROMPT_VERSION
    messages = [build(p) for p in pairs]
    requests = [client.request(m, prompt_version) for m in messages]
    replies = {r.request_key: r for r in client.complete_many(requests)}
    first = [replies[r.key] for r in requests]
    parsed = [_parse(reply, sections) for reply in first]

    follow_ups = {}
    if repair_failures:
        for i, (reply, result) in enumerate(zip(first, parsed, strict=True)):
            if result.outcome in REPAIRABLE:
                follow_ups[i] = client.request(
                    repair(messages[i], reply.text or "", result.reason, sections), prompt_version
                )
    repaired = {r.request_key: r for r in client.complete_many(follow_ups.values())}

    results = []
    for i, pair in enumerate(pairs):
        outcome, reason, repair_key, repair_reply = parsed[i].outcome, parsed[i].reason, None, None
        found = parsed[i].sections if parsed[i].ok else {}
        fixed = False
        if i in follow_ups:
            repair_key = follow_ups[i].key
            repair_reply = repaired[repair_key]
            second = _parse(repair_reply, sections)
            if second.ok:
                found, fixed = second.sections, True
                reason = f"repaired after: {reason}"
                outcome = Outcome.OK
            else:
                reason = f"{reason}; the repair call gave {second.outcome}: {second.reason}"
        if outcome != Outcome.OK:
            reason = f"kept the original pair: {reason}"
        prompt_tokens, completion_tokens, cost = _usage(first[i], repair_reply)
        final = repair_reply if fixed else first[i]
        results.append(
            PhaseResult(
                pair=pair,
                request_key=requests[i].key,
                repair_key=repair_key,
                outcome=outcome,
                reason=reason,
                repaired=fixed,
                sections=found,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd=cost,
                finish_reason=final.finish_reason if final else None,
            )
        )
    return results


def _continuation_requests(client: OracleClient, messages: list[list[Message]], section: str):
    return [
        client.request(m, compact_prompts.COMPACT_VERSION, compact_prompts.STOP, max_tokens=compact_prompts.MAX_TOKENS[section])
        for m in messages
    ]


def _parsed_continuations(client, requests, section: str, originals: Sequence[str | None]):
    replies = {r.request_key: r for r in client.complete_many(requests)}
    out = []
    for request, original in zip(requests, originals, strict=True):
        reply = replies[request.key]
        out.append((reply, parse_continuation(reply.text, section, reply.finish_reason, reply.error, original)))
    return out


def _compact_result(pair: Record, keys: list[str], answers: list[tuple[OracleReply, Parsed]], sections: tuple[str, ...]) -> PhaseResult:
    """One record's result from its compact calls (one per section, in order; fewer when an
    earlier one failed and the rest were not asked)."""
    failed = next(((name, parsed) for name, (_, parsed) in zip(sections, answers) if not parsed.ok), None)
    found = {name: parsed.sections[name] for name, (_, parsed) in zip(sections, answers) if parsed.ok}
    prompt_tokens, completion_tokens, cost = _usage(*(reply for reply, _ in answers))
    if failed is None:
        outcome, reason = Outcome.OK, ""
    else:
        outcome, reason = failed[1].outcome, f"kept the original pair: {failed[1].reason}"
        found = {}
    return PhaseResult(
        pair=pair,
        request_key=keys[0],
        repair_key=None,
        outcome=outcome,
        reason=reason,
        repaired=False,
        sections=found,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost,
        finish_reason=answers[-1][0].finish_reason,
        answer_key=keys[1] if len(keys) > 1 else None,
    )


def compact_instructions(client: OracleClient, pairs: Sequence[Record]) -> list[PhaseResult]:
    """Phase 1, compact: every new instruction first (the record's input folded in when the
    model left it out), then the answers of those that parsed."""
    build = compact_prompts.instruction_messages
    firsts = _continuation_requests(client, [build(p.instruction, p.input) for p in pairs], NEW_INSTRUCTION)
    instructions = _parsed_continuations(client, firsts, NEW_INSTRUCTION, [p.instruction for p in pairs])
    folded = {
        i: compact_prompts.fold_input(parsed.sections[NEW_INSTRUCTION], pairs[i].input)
        for i, (_, parsed) in enumerate(instructions)
        if parsed.ok
    }
    asked = sorted(folded)
    seconds = _continuation_requests(
        client,
        [compact_prompts.answer_messages(pairs[i].instruction, pairs[i].input, folded[i]) for i in asked],
        NEW_ANSWER,
    )
    answers = dict(zip(asked, zip(seconds, _parsed_continuations(client, seconds, NEW_ANSWER, [None] * len(asked)))))
    results = []
    for i, pair in enumerate(pairs):
        reply, parsed = instructions[i]
        if i in folded:
            parsed = Parsed(parsed.outcome, {NEW_INSTRUCTION: folded[i]}, parsed.reason)
        keys, calls = [firsts[i].key], [(reply, parsed)]
        if i in answers:
            keys.append(answers[i][0].key)
            calls.append(answers[i][1])
        results.append(_compact_result(pair, keys, calls, (NEW_INSTRUCTION, NEW_ANSWER)))
    return results


def compact_responses(client: OracleClient, pairs: Sequence[Record]) -> list[PhaseResult]:
    """Phase 2, compact: a better answer per pair; repeating the old answer is not one."""
    build = compact_prompts.response_messages
    requests = _continuation_requests(client, [build(p.instruction, p.input, p.output) for p in pairs], BETTER_ANSWER)
    parsed = _parsed_continuations(client, requests, BETTER_ANSWER, [p.output for p in pairs])
    return [
        _compact_result(pair, [request.key], [call], (BETTER_ANSWER,))
        for pair, request, call in zip(pairs, requests, parsed, strict=True)
    ]


def _reflect(client: OracleClient, pairs: Sequence[Record], compact, paper_prompt, sections, repair_failures: bool):
    if client.settings.prompt_profile == COMPACT:
        return compact(client, pairs)
    build = lambda p: paper_prompt(p.instruction, p.input, p.output)  # noqa: E731
    return run_phase(client, pairs, build, sections, repair_failures)


def reflect_instructions(client: OracleClient, pairs: Sequence[Record], repair_failures: bool = True) -> list[PhaseResult]:
    """Phase 1: a new instruction and its answer, both or neither."""
    return _reflect(client, pairs, compact_instructions, instruction_reflection, INSTRUCTION_SECTIONS, repair_failures)


def reflect_responses(client: OracleClient, pairs: Sequence[Record], repair_failures: bool = True) -> list[PhaseResult]:
    """Phase 2: a better answer for the pair as it stands."""
    return _reflect(client, pairs, compact_responses, response_reflection, RESPONSE_SECTIONS, repair_failures)
