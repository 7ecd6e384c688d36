"""Benchmark answers from a serving engine: any OpenAI-compatible server (vLLM, SGLang, …)
that serves the student's base model and its adapters, each adapter under its adapter id
as the model name (vLLM: `--enable-lora --lora-modules ID=PATH …`, which `reflection
adapters --serve-args` prints). The requests go through the oracle client, so they are
cached (a re-run asks nothing), sent concurrently, retried, counted and priced like every
other call; decoding is greedy with the local backend's `max_new_tokens`.

REFLECTION_ANSWERS_BACKEND      local (greedy decoding in the step, engines/models/decoding.py; the default) or openai
REFLECTION_ANSWERS_BASE_URL     the server's /v1 URL (openai)
REFLECTION_ANSWERS_API_KEY      its key, if it wants one (never stored or logged)
REFLECTION_ANSWERS_MODEL        the base model's name at the server (compare_base)
REFLECTION_ANSWERS_MAX_CONCURRENCY  requests in flight at most (32)"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reflection_assets.engines.benchmark.answers import BenchmarkError, GenerationSettings, Log, Model
from reflection_assets.engines.oracle.kinds import BACKENDS, kind_of
from reflection_assets.engines.store.storage import Database

PREFIX = "REFLECTION_ANSWERS_"
# Part of every answer request's key: a change of how answers are asked is a new request.
PROMPT_VERSION = "answers-v1"


@dataclass(frozen=True)
class AnswersBackend:
    kind: str = "local"
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None  # the base model's name at the server
    max_concurrency: int = 32

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AnswersBackend:
        environ = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return environ.get(PREFIX + name) or None

        kind = get("BACKEND") or "local"
        if kind not in BACKENDS:
            raise BenchmarkError(f"{PREFIX}BACKEND={kind!r}: expected one of {', '.join(BACKENDS)}")
        concurrency = get("MAX_CONCURRENCY") or "32"
        if not concurrency.isdigit() or int(concurrency) < 1:
            raise BenchmarkError(f"{PREFIX}MAX_CONCURRENCY={concurrency!r}: expected a whole number of 1 or more")
        backend = cls(kind, get("BASE_URL"), get("API_KEY"), get("MODEL"), int(concurrency))
        if backend.served and not backend.base_url:
            raise BenchmarkError(f"{PREFIX}BACKEND=openai needs {PREFIX}BASE_URL: the server's /v1 URL")
        return backend

    @property
    def served(self) -> bool:
        return not kind_of(self.kind).in_process

    def key_part(self) -> dict[str, str]:
        """What the answers' cache key and the benchmark run id add for this backend:
        nothing for the local one (the keys it always had)."""
        return {"backend": self.kind} if self.served else {}

    def served_name(self, model: Model) -> str:
        """The model name a request for `model` carries: the adapter id, or for the bare
        base model REFLECTION_ANSWERS_MODEL."""
        if model.adapter_path is not None:
            return model.key
        if not self.model:
            raise BenchmarkError(
                f"compare_base with {PREFIX}BACKEND=openai needs {PREFIX}MODEL: the base model's name at the server"
            )
        return self.model


def served_answers(
    db: Database,
    artifacts: str | Path,
    backend: AnswersBackend,
    model: Model,
    texts: Sequence[str],
    settings: GenerationSettings,
    log: Log,
) -> list[tuple[str, str, int]]:
    """(answer, finish_reason, new tokens) per prompt text, from the server."""
    from reflection_assets.engines.oracle.client import OracleClient
    from reflection_assets.engines.oracle.settings import OracleSettings

    if model.template == "vicuna":
        raise BenchmarkError(
            f"the {model.name} adapter was trained in the Vicuna layout; a server applies the model's chat "
            f"template, so answer it with {PREFIX}BACKEND=local"
        )
    oracle = OracleSettings(
        # A server that wants no key gets a placeholder: the SDK sends nothing without one.
        backend="openai", model=backend.served_name(model), base_url=backend.base_url,
        api_key=backend.api_key or os.environ.get("OPENAI_API_KEY") or "none",
        temperature=0.0, max_tokens=settings.max_new_tokens, max_concurrency=backend.max_concurrency,
        probe="off", prompts="paper",
    )
    client = OracleClient(oracle, db, artifacts, logging.getLogger("reflection.answers"))
    requests = [client.request([("user", text)], PROMPT_VERSION) for text in texts]
    replies = {reply.request_key: reply for reply in client.complete_many(requests)}
    failed = [replies[r.key] for r in requests if replies[r.key].error is not None]
    if failed:
        raise BenchmarkError(
            f"{len(failed)} of {len(requests)} answer requests for {model.name} ({oracle.model}) failed at "
            f"{backend.base_url} (first: {failed[0].error}); the others are kept and will not be asked again"
        )
    log(f"{model.name}: {len(requests)} answers from {oracle.model} at the server "
        f"({client.stats.cached} cached, {client.stats.requested - client.stats.cached} asked)")
    return [
        ((replies[r.key].text or "").strip(), replies[r.key].finish_reason or "stop", replies[r.key].completion_tokens)
        for r in requests
    ]
