"""Running a reflection phase over many pairs through the oracle client: build every
request, send them all at once (the client streams, caches and retries), parse each reply,
and give the ones that failed to parse a single follow-up call that says what was wrong.
A pair is replaced only when every section it needs parsed; otherwise it stays as it was
and the outcome says why."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.oracle.replies import OracleReply
from reflection_assets.method.parsing import (
    INSTRUCTION_SECTIONS,
    REPAIRABLE,
    RESPONSE_SECTIONS,
    Outcome,
    Parsed,
    parse_sections,
)
from reflection_assets.method import prompts
from reflection_assets.method.prompts import (
    instruction_reflection,
    repair,
    response_reflection,
)
from reflection_assets.method.requests import Message


@dataclass(frozen=True)
class Pair:
    record_id: str
    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class PhaseResult:
    pair: Pair
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

    @property
    def ok(self) -> bool:
        return self.outcome == Outcome.OK


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
    pairs: Sequence[Pair],
    build: Callable[[Pair], list[Message]],
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


def reflect_instructions(client: OracleClient, pairs: Sequence[Pair], repair_failures: bool = True) -> list[PhaseResult]:
    """Phase 1: a new instruction and its answer, both or neither."""
    return run_phase(
        client,
        pairs,
        lambda p: instruction_reflection(p.instruction, p.input, p.output),
        INSTRUCTION_SECTIONS,
        repair_failures,
    )


def reflect_responses(client: OracleClient, pairs: Sequence[Pair], repair_failures: bool = True) -> list[PhaseResult]:
    """Phase 2: a better answer for the pair as it stands."""
    return run_phase(
        client,
        pairs,
        lambda p: response_reflection(p.instruction, p.input, p.output),
        RESPONSE_SECTIONS,
        repair_failures,
    )

