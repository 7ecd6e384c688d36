"""The pairwise judge of METHOD.md section 4, in our own words: the prompt, the parser of
the two scores on the reply's first line, the per-prompt outcome from the two orders, and
the winning score. Pure: no I/O."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from reflection_assets.method.requests import Message

# The compact profile's judge (a small local model) scores each answer on its own: asked
# whether the answer is correct and helpful, its score is 1 + 9 x P(Yes), a whole number from
# 1 to 10. Shown one answer at a time it has no position to prefer, and the two orders of a
# pair are judged from the same two scores. (Measured on the embedded model: asked for two
# scores on one line it copies the labels' digits, "1 2", for every pair.) The versions of
# both judges are derived from their texts (method/profiles.py).

WIN, TIE, LOSE, UNPARSED = "win", "tie", "lose", "unparsed"
OUTCOMES = (WIN, TIE, LOSE, UNPARSED)

_SYSTEM = (
    "You are a careful, impartial reviewer of answers written by AI assistants. You compare "
    "answers on their merits, never on their position or their length alone."
)

_USER = """Read the question and the two answers below.

[Question]
{question}

[The Start of Assistant 1's Answer]
{answer_1}
[The End of Assistant 1's Answer]

[The Start of Assistant 2's Answer]
{answer_2}
[The End of Assistant 2's Answer]

Rate how well each assistant answered, considering helpfulness, relevance, accuracy and \
level of detail. Give each assistant an overall score from 1 to 10; higher is better.

Write the two scores alone on the first line, Assistant 1's first, separated by a space \
(for example: 7 9). From the second line on, explain your rating briefly and without bias: \
the order in which the answers were shown must not affect your judgment."""


def judge_messages(question: str, answer_1: str, answer_2: str) -> list[Message]:
    return [
        ("system", _SYSTEM),
        ("user", _USER.format(question=question, answer_1=answer_1, answer_2=answer_2)),
    ]


_COMPACT_SYSTEM = (
    "You are a strict judge of answers written by AI assistants. Judge helpfulness, relevance, "
    "accuracy and level of detail."
)
_COMPACT_USER = """[Question]
{question}

[Answer]
{answer}

Is this answer correct and helpful? Reply Yes or No."""


def compact_judge_messages(question: str, answer: str) -> list[Message]:
    """The compact judge's question about one answer; its reply's first token decides."""
    return [
        ("system", _COMPACT_SYSTEM),
        ("user", _COMPACT_USER.format(question=question, answer=answer.strip() or "(no answer)")),
    ]


_NUMBER = r"(\d{1,2}(?:\.\d+)?)"
_OUT_OF = r"(?:\s*/\s*10|\s+out\s+of\s+10)?"
# "Assistant 1: 8" / "Assistant 1 score - 8/10" / "Assistant 1 receives 8"
_LABELLED = re.compile(
    r"assistant\s*(?P<which>[12])\b[^0-9\n]{0,30}?" + _NUMBER.replace("(", "(?P<score>", 1) + _OUT_OF,
    re.IGNORECASE,
)
_PAIR = re.compile(r"^\s*" + _NUMBER + _OUT_OF + r"\s*(?:,|;|and|vs\.?|\s|-|/)\s*" + _NUMBER + _OUT_OF + r"\s*\.?\s*$", re.IGNORECASE)
_DECORATION = re.compile(r"[*_`#>]|^(?:scores?|ratings?)\s*[:=-]\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Scores:
    first: float  # the assistant shown first
    second: float


def _valid(a: float, b: float) -> Scores | None:
    return Scores(a, b) if 0 <= a <= 10 and 0 <= b <= 10 else None


def parse_scores(text: str | None) -> Scores | None:
    """The two scores on the reply's first line; None when the reply does not give them.

    Accepted: "8 7", "8, 7", "8/10 7/10", "**8 7**", "Scores: 8 and 7", and labelled
    forms ("Assistant 1: 8, Assistant 2: 7"), also spread over the first two lines.
    Anything else is unparsed, never guessed: a guess would be a silent tie or worse."""
    if not text:
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    first = _DECORATION.sub("", lines[0]).strip()
    first = _DECORATION.sub("", first).strip()  # "**Scores:** 8 7" has decoration on both sides
    match = _PAIR.match(first)
    if match:
        return _valid(float(match.group(1)), float(match.group(2)))
    head = "\n".join(_DECORATION.sub("", line) for line in lines[:2])
    labelled: dict[str, float] = {}
    for found in _LABELLED.finditer(head):
        labelled.setdefault(found.group("which"), float(found.group("score")))
    if set(labelled) == {"1", "2"}:
        return _valid(labelled["1"], labelled["2"])
    return None


def order_verdict(scores: Scores | None, test_first: bool) -> int | None:
    """+1 when the model under test scored higher in this order, 0 equal, -1 lower."""
    if scores is None:
        return None
    test, ref = (scores.first, scores.second) if test_first else (scores.second, scores.first)
    return (test > ref) - (test < ref)


def outcome(first: int | None, second: int | None) -> str:
    """The method's rule over the two orders: better in both, or better in one and equal in
    the other, wins; equal in both, or better in one and worse in the other, ties; the
    mirror of a win loses. A reply that could not be parsed makes the prompt unparsed."""
    if first is None or second is None:
        return UNPARSED
    total = first + second
    if total > 0:
        return WIN
    if total < 0:
        return LOSE
    return TIE


@dataclass(frozen=True)
class Tally:
    win: int = 0
    tie: int = 0
    lose: int = 0
    unparsed: int = 0

    @property
    def judged(self) -> int:
        return self.win + self.tie + self.lose

    @property
    def winning_score(self) -> float | None:
        """(win - lose) / N + 1, N the prompts judged in both orders: from 0 to 2, above 1
        means the model under test is better. Unparsed prompts are left out of N (and
        reported), not counted as ties; None when nothing was judged."""
        return None if self.judged == 0 else (self.win - self.lose) / self.judged + 1

    @classmethod
    def of(cls, outcomes: list[str]) -> "Tally":
        unknown = set(outcomes) - set(OUTCOMES)
        if unknown:
            raise ValueError(f"unknown outcome(s): {sorted(unknown)}")
        return cls(*(outcomes.count(name) for name in OUTCOMES))

    @property
    def win_rate(self) -> float | None:
        """AlpacaEval's figure against reference answers: (wins + ties / 2) / judged."""
        return None if self.judged == 0 else (self.win + self.tie / 2) / self.judged


# ---------------------------------------------------------------- uncertainty

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def bootstrap_intervals(
    tally: Tally, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE
) -> tuple[Interval, Interval] | None:
    """95% intervals of the winning score and of the win rate, from a paired bootstrap over
    the judged prompts: each resample draws N prompts with replacement (each prompt's outcome
    already pairs the two models on it) and recomputes both figures; the interval is the
    resamples' percentiles, widened where needed to hold the score itself. A resample of N
    prompts is a multinomial draw of (win, tie, lose) with the observed shares, which is how
    it is drawn. None when nothing was judged."""
    n = tally.judged
    if n == 0:
        return None
    import numpy as np

    counts = np.random.default_rng(seed).multinomial(n, [tally.win / n, tally.tie / n, tally.lose / n], size=resamples)
    win, tie, lose = counts[:, 0], counts[:, 1], counts[:, 2]
    tails = [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2]
    intervals = []
    for values, point in (((win - lose) / n + 1, tally.winning_score), ((win + tie / 2) / n, tally.win_rate)):
        low, high = (float(v) for v in np.percentile(values, tails))
        intervals.append(Interval(min(low, point), max(high, point)))
    return intervals[0], intervals[1]


def sign_test(win: int, lose: int) -> float:
    """Two-sided sign test of wins against losses (ties left out): the probability, were
    either model as likely to win a prompt, of a split at least this uneven. 1.0 when no
    prompt was won or lost."""
    n = win + lose
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(win, lose) + 1))
    return min(1.0, 2 * tail / 2**n)
