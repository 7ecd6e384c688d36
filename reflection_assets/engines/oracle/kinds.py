"""The oracle backends and what each can do. Everything that differs between the embedded
model and an endpoint is decided here, by a capability, never by comparing the backend's
name (`grep "backend =="` finds nothing outside this module).

`local`: a causal LM (the embedded model by default) running in this process. `openai`:
any OpenAI-compatible endpoint (OpenAI itself, vLLM, SGLang, a gateway)."""

from __future__ import annotations

from dataclasses import dataclass

from reflection_assets.errors import SettingsError
from reflection_assets.method.profiles import COMPACT, PAPER


@dataclass(frozen=True)
class BackendKind:
    name: str
    # The model runs in this process: no endpoint to probe (its files say what it is), no
    # price, its tokenizer at hand for estimates, its precision and decoding settings part of
    # each reply's identity, its requests served in batches one after the other.
    in_process: bool
    # The model must be named: an endpoint serves many (the local backend has a default).
    needs_model: bool
    # Batch mode: the endpoint's Batch API (files in, files out, a discount).
    has_batch_api: bool
    # The prompt profile `auto` picks: the compact one for a small model that echoes the
    # paper's long prompt (method/profiles.py).
    default_profile: str
    # The reply's token limit when none is set (at ~110 tokens/s on 2 cores, 2,048 tokens a
    # reply would make the 128-record sample take hours).
    default_max_tokens: int
    # `repair: auto`: one follow-up call for a reply that failed to parse. Off for the
    # embedded model, whose failed replies are echo loops a second call does not fix.
    repair_default: bool
    # `ok_share_severity: auto`: how a shard with too few parsed replies fails its check (a
    # 135M model's parse failures are expected; an endpoint's are a problem).
    ok_share_severity: str
    # `reflection run` sends a stage's requests for every shard ahead together, so that the
    # model generates in full batches across shards (benchmarks/local_batch.py); an endpoint
    # serves shards one after the other at its own concurrency.
    sends_ahead: bool


KINDS = {
    "local": BackendKind(
        "local", in_process=True, needs_model=False, has_batch_api=False, default_profile=COMPACT,
        default_max_tokens=256, repair_default=False, ok_share_severity="WARN", sends_ahead=True,
    ),
    "openai": BackendKind(
        "openai", in_process=False, needs_model=True, has_batch_api=True, default_profile=PAPER,
        default_max_tokens=2048, repair_default=True, ok_share_severity="ERROR", sends_ahead=False,
    ),
}
BACKENDS = tuple(KINDS)


def kind_of(backend: str) -> BackendKind:
    """The backend named `backend`, or a reply identity's backend ("local/float32/rp1.1")."""
    name = backend.partition("/")[0]
    if name not in KINDS:
        raise SettingsError(f"oracle backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return KINDS[name]
