"""Oracle requests as values: the canonical form, its content-addressed key, and the
fingerprint of the settings that change replies. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from reflection_assets.method.digests import json_digest

Message = tuple[str, str]  # (role, content)


def _digest(payload: object) -> str:
    return json_digest(payload, ascii=False, compact=True, length=64)


@dataclass(frozen=True, slots=True)
class SamplingSettings:
    """Everything besides the messages that changes what an oracle replies."""

    backend: str
    model: str
    temperature: float
    max_tokens: int
    seed: int | None

    def fingerprint(self, prompt_version: str) -> str:
        """16 hex digits naming the oracle and prompt version; never the API key or URL."""
        return _digest({**self._fields(), "prompt_version": prompt_version})[:16]

    def _fields(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }


# A reply constrained to one whole number from 1 to 10: 1 + 9 x the probability that the
# reply would begin "Yes" rather than "No" (the compact judge's score of one answer).
YES_SCORE = "yes_score_1_10"
CONSTRAINTS = (YES_SCORE,)


@dataclass(frozen=True, slots=True)
class OracleRequest:
    """One call. When the last message is the assistant's, the reply continues that turn
    (the section marker is written for the model). `stop` ends the reply at the first of
    these strings, which the reply does not include. `constraint` limits what the reply may
    be (YES_SCORE). `served` names the snapshot behind the model name when it is not the first
    one this database saw for it (engines/oracle/identity.py), so another snapshot's reply is
    never taken for this one's. All three are part of the key only when set, so requests
    without them keep the keys they always had."""

    messages: tuple[Message, ...]
    sampling: SamplingSettings
    prompt_version: str
    stop: tuple[str, ...] = ()
    constraint: str | None = None
    served: str | None = None
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.constraint is not None and self.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint {self.constraint!r}: expected one of {', '.join(CONSTRAINTS)}")
        # sha256 of the canonical request: equal requests share one reply, forever.
        object.__setattr__(self, "key", _digest(self.canonical()))

    def canonical(self) -> dict[str, object]:
        canonical: dict[str, object] = {
            **self.sampling._fields(),
            "prompt_version": self.prompt_version,
            "messages": [list(m) for m in self.messages],
        }
        if self.stop:
            canonical["stop"] = list(self.stop)
        if self.constraint is not None:
            canonical["constraint"] = self.constraint
        if self.served is not None:
            canonical["served"] = self.served
        return canonical

    @classmethod
    def from_canonical(cls, canonical: dict) -> "OracleRequest":
        """The request a canonical form (as stored with replies and batches) describes."""
        sampling = SamplingSettings(
            canonical["backend"], canonical["model"], canonical["temperature"], canonical["max_tokens"], canonical["seed"]
        )
        return cls(
            tuple((role, content) for role, content in canonical["messages"]),
            sampling,
            canonical["prompt_version"],
            tuple(canonical.get("stop", ())),
            canonical.get("constraint"),
            canonical.get("served"),
        )

    @property
    def continues(self) -> bool:
        """The reply continues the assistant turn the messages end with."""
        return bool(self.messages) and self.messages[-1][0] == "assistant"

    @property
    def fingerprint(self) -> str:
        return self.sampling.fingerprint(self.prompt_version)

    def chat_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def prompt_chars(self) -> int:
        return sum(len(content) for _, content in self.messages)

    def estimated_tokens(self) -> int:
        """Upper estimate for rate limits and budget: ~4 characters a token, plus the
        whole completion allowance, as providers count it against tokens per minute."""
        return self.prompt_chars() // 4 + 8 * len(self.messages) + self.sampling.max_tokens
