"""Oracle requests as values: the canonical form, its content-addressed key, and the
fingerprint of the settings that change replies. Pure: no I/O."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

Message = tuple[str, str]  # (role, content)


def _digest(payload: object) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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


@dataclass(frozen=True, slots=True)
class OracleRequest:
    messages: tuple[Message, ...]
    sampling: SamplingSettings
    prompt_version: str
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # sha256 of the canonical request: equal requests share one reply, forever.
        object.__setattr__(self, "key", _digest(self.canonical()))

    def canonical(self) -> dict[str, object]:
        return {
            **self.sampling._fields(),
            "prompt_version": self.prompt_version,
            "messages": [list(m) for m in self.messages],
        }

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
