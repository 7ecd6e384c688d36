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
