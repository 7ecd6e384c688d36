"""What comes back from the oracle: a reply, or a failure with its kind and reason."""

from __future__ import annotations

from dataclasses import dataclass

from reflection_assets.method.requests import OracleRequest


class ErrorKind:
    PERMANENT = "permanent"  # 400, 401, 403, 404, 422: asking again will not help
    TRANSIENT = "transient"  # 429, 5xx, timeouts, dropped connections: retries ran out
    BUDGET = "budget"  # not sent: the dollar budget was reached
    DEFERRED = "deferred"  # not sent: written to a batch file instead (never stored)


@dataclass(frozen=True, slots=True)
class BackendReply:
    """A backend's answer to one request, before accounting."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    served_model: str | None = None  # the completion's `model`: what really answered
    system_fingerprint: str | None = None


class BackendError(Exception):
    """A failed call. `transient` ones are retried; `throttled` ones (429) also shrink
    the concurrency limit."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        status: int | None = None,
        retry_after: float | None = None,
        throttled: bool = False,
    ):
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.retry_after = retry_after
        self.throttled = throttled


@dataclass(frozen=True, slots=True)
class OracleReply:
    request_key: str
    fingerprint: str
    text: str | None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False
    error_kind: str | None = None
    error: str | None = None
    status: int | None = None
    served_model: str | None = None  # what the endpoint said answered (the completion's `model`)
    system_fingerprint: str | None = None
    served_identity: str | None = None  # the probed identity the request was sent under

    @classmethod
    def paid(
        cls, request: OracleRequest, reply: BackendReply, *, cost_usd: float, attempts: int,
        served_identity: str | None, latency_s: float = 0.0,
    ) -> "OracleReply":
        """A backend's answer to `request`, with what it cost and what served it."""
        return cls(
            request_key=request.key,
            fingerprint=request.fingerprint,
            text=reply.text,
            finish_reason=reply.finish_reason,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            cost_usd=cost_usd,
            latency_s=latency_s,
            attempts=attempts,
            served_model=reply.served_model,
            system_fingerprint=reply.system_fingerprint,
            served_identity=served_identity,
        )

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"
