"""The judge's parser, the outcome rule over both orders, and the winning score."""

import itertools

import pytest

from reflection_assets.method.judging import (
    LOSE,
    TIE,
    UNPARSED,
    WIN,
    Scores,
    Tally,
    judge_messages,
    order_verdict,
    outcome,
    parse_scores,
)


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("8 7\nAssistant 1 is more detailed.", (8, 7)),
        ("8, 7", (8, 7)),
        ("8/10 7/10\nBoth fine.", (8, 7)),
        ("**8 9**\n\nAssistant 2 covers more.", (8, 9)),
        ("Scores: 6 and 9", (6, 9)),
        ("**Scores:** 6 9", (6, 9)),
        ("8.5 7", (8.5, 7)),
        ("  \n10 1\nexplanation", (10, 1)),
        ("Assistant 1: 8, Assistant 2: 4\nreasons", (8, 4)),
        ("Assistant 1: 3/10\nAssistant 2: 9/10\nreasons", (3, 9)),
        ("Assistant 2: 9\nAssistant 1: 3", (3, 9)),
        ("7 out of 10, 5 out of 10", (7, 5)),
        ("`5 5`", (5, 5)),
    ],
)
def test_parses_common_first_lines(reply, expected):
    assert parse_scores(reply) == Scores(*expected)


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "   \n  ",
        "Assistant 1 gives a better answer because it is clear.\n8 7",  # scores not at the top
        "8\nThe first answer is good.",  # one score only
        "Assistant 1: 8\nreasons",  # one labelled score only
        "12 7",  # out of range
        "I cannot compare these answers.",
        "1. Helpfulness: both are fine",
        "8 7 6",  # three numbers: which two?
    ],
)
def test_unparsable_replies_are_none(reply):
    assert parse_scores(reply) is None


def test_the_verdict_reads_the_scores_from_the_test_models_side():
    assert order_verdict(Scores(8, 7), test_first=True) == 1
    assert order_verdict(Scores(8, 7), test_first=False) == -1
    assert order_verdict(Scores(7, 7), test_first=False) == 0
    assert order_verdict(None, test_first=True) is None


# Every combination of the two orders' verdicts, with the method's rule spelled out.
EXPECTED = {
    (1, 1): WIN, (1, 0): WIN, (0, 1): WIN,
    (0, 0): TIE, (1, -1): TIE, (-1, 1): TIE,
    (-1, -1): LOSE, (-1, 0): LOSE, (0, -1): LOSE,
}


@pytest.mark.parametrize("first, second", list(itertools.product([1, 0, -1, None], repeat=2)))
def test_outcome_of_every_combination(first, second):
    expected = UNPARSED if first is None or second is None else EXPECTED[(first, second)]
    assert outcome(first, second) == expected


def test_position_bias_alone_is_a_tie():
    # A judge that always prefers the first answer shown: better in one order, worse in the other.
    first = order_verdict(Scores(9, 5), test_first=True)
    second = order_verdict(Scores(9, 5), test_first=False)
    assert outcome(first, second) == TIE


def test_winning_score():
    assert Tally.of([WIN, WIN, TIE, LOSE]).winning_score == pytest.approx((2 - 1) / 4 + 1)
    assert Tally.of([WIN] * 3).winning_score == 2.0
    assert Tally.of([LOSE] * 3).winning_score == 0.0
    assert Tally.of([TIE, WIN, LOSE]).winning_score == 1.0


def test_unparsed_prompts_are_reported_and_left_out_of_n():
    tally = Tally.of([WIN, UNPARSED, UNPARSED, TIE])
    assert (tally.win, tally.tie, tally.lose, tally.unparsed, tally.judged) == (1, 1, 0, 2, 2)
    assert tally.winning_score == pytest.approx(1.5)  # not 1.25, which counting them as ties gives
    assert Tally.of([UNPARSED]).winning_score is None
    with pytest.raises(ValueError):
        Tally.of(["draw"])


def test_prompt_carries_question_answers_and_criteria():
    system, user = judge_messages("What is 2+2?", "4", "five")
    assert system[0] == "system" and user[0] == "user"
    text = user[1]
    assert "What is 2+2?" in text and "Assistant 1's Answer]\n4\n" in text and "\nfive\n" in text
    for criterion in ("helpfulness", "relevance", "accuracy", "level of detail"):
        assert criterion in text
    assert "first line" in text


def test_sign_test_against_values_computed_by_hand():
    from reflection_assets.method.judging import sign_test

    # n = 10 decided prompts, 1 lost: 2 x (C(10,0) + C(10,1)) / 2^10 = 2 x 11 / 1024
    assert sign_test(9, 1) == pytest.approx(22 / 1024)
    assert sign_test(1, 9) == sign_test(9, 1)  # two-sided: symmetric
    # n = 5, 0 lost: 2 x 1 / 32
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    # 16 wins, 6 losses (the demo's split): 2 x sum_{k<=6} C(22,k) / 2^22
    assert sign_test(16, 6) == pytest.approx(2 * (1 + 22 + 231 + 1540 + 7315 + 26334 + 74613) / 2**22)
    assert sign_test(16, 6) == pytest.approx(0.0524788, abs=1e-7)  # 220112 / 4194304
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0  # an even split; nothing decided


def test_bootstrap_intervals_are_seeded_contain_the_score_and_shrink_with_more_prompts():
    import math

    from reflection_assets.method.judging import Tally, bootstrap_intervals

    tally = Tally(win=16, tie=23, lose=6)  # the demo's 45 prompts
    score_ci, rate_ci = bootstrap_intervals(tally, resamples=2000, seed=0)
    assert bootstrap_intervals(tally, resamples=2000, seed=0) == (score_ci, rate_ci)  # seeded
    assert bootstrap_intervals(tally, resamples=2000, seed=1) != (score_ci, rate_ci)
    assert score_ci.low <= tally.winning_score <= score_ci.high
    assert rate_ci.low <= tally.win_rate <= rate_ci.high
    # By hand: per prompt x = +1 (win), 0 (tie), -1 (lose); the score is mean(x) + 1, whose
    # standard error is sd(x) / sqrt(n). The percentile interval of 2,000 resamples lies
    # within 0.03 of the normal one, mean +- 1.96 se.
    n = tally.judged
    mean = (tally.win - tally.lose) / n
    se = math.sqrt(((tally.win + tally.lose) / n - mean**2) / n)
    assert score_ci.low == pytest.approx(mean + 1 - 1.96 * se, abs=0.03)
    assert score_ci.high == pytest.approx(mean + 1 + 1.96 * se, abs=0.03)
    # The win rate is (1 + mean(x)) / 2 prompt by prompt: its interval is the score's, halved.
    assert rate_ci.low == pytest.approx((score_ci.low) / 2) and rate_ci.high == pytest.approx(score_ci.high / 2)
    bigger, _ = bootstrap_intervals(Tally(win=160, tie=230, lose=60))
    assert bigger.high - bigger.low < (score_ci.high - score_ci.low) / 2
    # Every outcome alike: no spread, and the interval is the score itself.
    sure, _ = bootstrap_intervals(Tally(win=7))
    assert (sure.low, sure.high) == (2.0, 2.0)
    for win, tie, lose in ((1, 0, 0), (0, 3, 1), (2, 5, 9), (40, 0, 1)):
        one = Tally(win, tie, lose)
        found, _ = bootstrap_intervals(one, resamples=200, seed=3)
        assert found.low <= one.winning_score <= found.high
    assert bootstrap_intervals(Tally(unparsed=4)) is None
