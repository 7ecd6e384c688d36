"""Judging pairs of answers through the oracle client, in both orders (METHOD.md section
4), the way the judge's prompt profile says (method/profiles.JudgeProtocol): the paper's
pairwise prompt (one call per order, the two scores on the reply's first line) or, on a
small local judge, one score per distinct answer (YES_SCORE) put together as that first
line. Every reply is cached by the oracle layer; identical requests
are sent once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reflection_assets.engines.oracle.client import OracleClient
from reflection_assets.engines.benchmark.testsets import TestPrompt
from reflection_assets.method.judging import UNPARSED, order_verdict, outcome, parse_scores
from reflection_assets.method.profiles import JudgeProtocol, profile


@dataclass(frozen=True)
class _Order:
    comparison: str
    testset: str
    prompt: TestPrompt
    test_first: bool
    answers: tuple[str, str]  # as shown: Assistant 1's, Assistant 2's


@dataclass(frozen=True)
class _Verdict:
    """The judge's reply to one order: its text (the two scores on the first line), or why
    there is none; the keys of the calls that made it."""

    request_key: str
    followup_key: str | None
    text: str | None
    error: str | None


def _pairwise_verdicts(client: OracleClient, orders: Sequence[_Order], judge: JudgeProtocol, version: str) -> list[_Verdict]:
    """One call per order: both answers shown, the two scores on the reply's first line."""
    requests = [client.request(judge.messages(o.prompt.text, *o.answers), version) for o in orders]
    replies = {reply.request_key: reply for reply in client.complete_many(requests)}
    return [_Verdict(r.key, None, replies[r.key].text, replies[r.key].error) for r in requests]


def _score_of(reply) -> int | None:
    try:
        score = int(reply.text) if reply.ok else None
    except (TypeError, ValueError):
        return None
    return score if score is not None and 1 <= score <= 10 else None


def _per_answer_verdicts(client: OracleClient, orders: Sequence[_Order], judge: JudgeProtocol, version: str) -> list[_Verdict]:
    """Each answer scored on its own (a small local judge: YES_SCORE, 1 to 10); an order's
    reply is the two scores in the order shown. One call per distinct answer: the second
    order of a pair costs nothing."""
    requests = {
        (order.prompt.text, answer): client.request(
            judge.messages(order.prompt.text, answer), version, constraint=judge.constraint
        )
        for order in orders
        for answer in order.answers
    }
    got = {reply.request_key: reply for reply in client.complete_many(requests.values())}
    verdicts = []
    for order in orders:
        first, second = (requests[(order.prompt.text, answer)] for answer in order.answers)
        scores = [_score_of(got[first.key]), _score_of(got[second.key])]
        if None in scores:
            bad = got[first.key] if scores[0] is None else got[second.key]
            verdicts.append(_Verdict(first.key, second.key, None, bad.error or f"not a score: {bad.text!r}"))
        else:
            verdicts.append(_Verdict(first.key, second.key, f"{scores[0]} {scores[1]}", None))
    return verdicts


REFERENCE = "reference"  # the test set's own reference answers, judged like a model's


def judge_all(
    client: OracleClient,
    testsets: dict[str, list[TestPrompt]],
    answers: dict[str, dict[str, str]],
    comparisons: Sequence[tuple[str, str]],
) -> tuple[list[dict[str, object]], list[dict[str, object]], dict[str, int]]:
    """(judgment rows, outcome rows, counts). Each pair is judged in both orders; requests
    that are the same (say, both answers identical) are sent once."""
    orders: list[_Order] = []
    for test, ref in comparisons:
        comparison = f"{test}_vs_{ref}"
        for testset, prompts in testsets.items():
            for prompt in prompts:
                if ref == REFERENCE and prompt.prompt_hash not in answers[ref]:
                    continue  # a prompt without a reference answer is judged against the models only
                a_test, a_ref = answers[test][prompt.prompt_hash], answers[ref][prompt.prompt_hash]
                for test_first in (True, False):
                    shown = (a_test, a_ref) if test_first else (a_ref, a_test)
                    orders.append(_Order(comparison, testset, prompt, test_first, shown))
    chosen = profile(client.settings.prompt_profile)
    ask = _per_answer_verdicts if chosen.judge.per_answer else _pairwise_verdicts
    replies = ask(client, orders, chosen.judge, chosen.judge_version)
    judgments, verdicts = [], {}
    keys = {r.request_key for r in replies} | {r.followup_key for r in replies if r.followup_key}
    counts = {"requests": len(keys), "unparsed": 0, "oracle_errors": 0}
    for order, reply in zip(orders, replies, strict=True):
        failed = reply.error is not None
        scores = None if failed else parse_scores(reply.text)
        status = "oracle_error" if failed else ("ok" if scores is not None else UNPARSED)
        counts["oracle_errors" if failed else "unparsed"] += status != "ok"
        test_score = ref_score = None
        if scores is not None:
            test_score, ref_score = (scores.first, scores.second) if order.test_first else (scores.second, scores.first)
        head = reply.error if failed else (reply.text or "").strip().split("\n", 1)[0][:200]
        judgments.append(
            {
                "comparison": order.comparison,
                "testset": order.testset,
                "prompt_id": order.prompt.prompt_id,
                "test_first": order.test_first,
                "request_key": reply.request_key,
                "followup_key": reply.followup_key,
                "score_test": test_score,
                "score_ref": ref_score,
                "status": status,
                "reply_head": head,
            }
        )
        verdicts[(order.comparison, order.testset, order.prompt.prompt_id, order.test_first)] = (
            order.prompt,
            order_verdict(scores, order.test_first),
        )
    outcomes = []
    for (comparison, testset, prompt_id, test_first), (prompt, verdict) in verdicts.items():
        if not test_first:
            continue
        other = verdicts[(comparison, testset, prompt_id, False)][1]
        outcomes.append(
            {
                "comparison": comparison,
                "testset": testset,
                "prompt_id": prompt_id,
                "category": prompt.category,
                "outcome": outcome(verdict, other),
            }
        )
    return judgments, outcomes, counts
