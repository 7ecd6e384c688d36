"""Running a reflection phase over many pairs through the oracle client: build every
request, send them all at once (the client streams, caches and retries), parse each reply,
and give the ones that failed to parse a single follow-up call that says what was wrong.
A pair is replaced only when every section it needs parsed; otherwise it stays as it was
and the outcome says why.

A phase is the steps its prompt profile lists (method/profiles.py), run in order over every
pair: `paper` has one step per phase with every section in it, `compact` one step per
section, each continuing its opened marker (phase 1: the new instruction, then its answer).
A pair that fails a step is not asked the next."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.oracle.replies import OracleReply
from reflection_assets.method.parsing import REPAIRABLE, Outcome, Parsed, parse_continuation, parse_sections
from reflection_assets.method.profiles import Phase, PromptProfile, Step, profile
from reflection_assets.method.prompts import repair
from reflection_assets.method.records import Record
from reflection_assets.method.requests import OracleRequest


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


def client_profile(client: OracleClient) -> PromptProfile:
    return profile(client.settings.prompt_profile)


def prompt_version(client: OracleClient) -> str:
    """The version of the prompts the client's profile uses: part of every request and of
    the oracle fingerprint."""
    return client_profile(client).version


def _parse(step: Step, reply: OracleReply, record: Record) -> Parsed:
    if step.continues:
        return parse_continuation(reply.text, step.sections[0], reply.finish_reason, reply.error, step.original(record))
    return parse_sections(reply.text, step.sections, reply.finish_reason, reply.error)


@dataclass
class _Progress:
    """One pair through a phase's steps: the calls made, what they found, how it ended."""

    keys: list[str]
    replies: list[OracleReply]
    found: dict[str, str]
    failed: Parsed | None = None
    reason: str = ""
    repair_key: str | None = None
    repaired: bool = False
    final: OracleReply | None = None  # the reply whose parse counts for the last step asked


def run_phase(client: OracleClient, pairs: Sequence[Record], phase: Phase, version: str,
              repair_failures: bool = True) -> list[PhaseResult]:
    """Every step of `phase` over `pairs`: each step's requests go out together (the client
    streams, caches and retries), then one repair call each for the replies of a repairable
    step that failed to parse."""
    progress = [_Progress([], [], {}) for _ in pairs]
    for step in phase.steps:
        asked = [i for i, p in enumerate(progress) if p.failed is None]
        messages = {i: step.build(pairs[i], progress[i].found) for i in asked}
        requests: dict[int, OracleRequest] = {
            i: client.request(messages[i], version, step.stop, max_tokens=step.max_tokens) for i in asked
        }
        replies = {r.request_key: r for r in client.complete_many(requests.values())}
        parsed = {i: _parse(step, replies[requests[i].key], pairs[i]) for i in asked}
        follow_ups: dict[int, OracleRequest] = {}
        if step.repairable and repair_failures:
            for i in asked:
                if parsed[i].outcome in REPAIRABLE:
                    text = replies[requests[i].key].text or ""
                    follow_ups[i] = client.request(repair(messages[i], text, parsed[i].reason, step.sections), version)
        repaired = {r.request_key: r for r in client.complete_many(follow_ups.values())}
        for i in asked:
            state, first, result = progress[i], replies[requests[i].key], parsed[i]
            state.keys.append(requests[i].key)
            state.replies.append(first)
            state.final, reason = first, result.reason
            if i in follow_ups:
                state.repair_key = follow_ups[i].key
                again = repaired[state.repair_key]
                state.replies.append(again)
                second = _parse(step, again, pairs[i])
                if second.ok:
                    result, state.final, state.repaired = second, again, True
                    reason = f"repaired after: {reason}"
                else:
                    reason = f"{reason}; the repair call gave {second.outcome}: {second.reason}"
            if not result.ok:
                state.failed, state.reason, state.found = result, f"kept the original pair: {reason}", {}
                continue
            found = dict(result.sections)
            if step.finish is not None:
                found = {name: step.finish(pairs[i], text) for name, text in found.items()}
            state.found.update(found)
            state.reason = reason if state.repaired else ""
    return [_result(pair, state) for pair, state in zip(pairs, progress, strict=True)]


def _result(pair: Record, state: _Progress) -> PhaseResult:
    return PhaseResult(
        pair=pair,
        request_key=state.keys[0],
        repair_key=state.repair_key,
        outcome=state.failed.outcome if state.failed is not None else Outcome.OK,
        reason=state.reason,
        repaired=state.repaired,
        sections=state.found,
        prompt_tokens=sum(r.prompt_tokens for r in state.replies),
        completion_tokens=sum(r.completion_tokens for r in state.replies),
        cost_usd=sum(r.cost_usd for r in state.replies),
        finish_reason=state.final.finish_reason if state.final is not None else None,
        answer_key=state.keys[1] if len(state.keys) > 1 else None,
    )


def reflect_instructions(client: OracleClient, pairs: Sequence[Record], repair_failures: bool = True) -> list[PhaseResult]:
    """Phase 1: a new instruction and its answer, both or neither."""
    chosen = client_profile(client)
    return run_phase(client, pairs, chosen.instructions, chosen.version, repair_failures)


def reflect_responses(client: OracleClient, pairs: Sequence[Record], repair_failures: bool = True) -> list[PhaseResult]:
    """Phase 2: a better answer for the pair as it stands."""
    chosen = client_profile(client)
    return run_phase(client, pairs, chosen.responses, chosen.version, repair_failures)
