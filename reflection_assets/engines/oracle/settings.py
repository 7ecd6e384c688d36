"""Oracle settings read from the environment: REFLECTION_ORACLE_* for the oracle and
REFLECTION_JUDGE_* for the judge, each judge setting falling back to the oracle's."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from reflection_assets.method.requests import SamplingSettings

BACKENDS = ("local", "openai")
EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
ORACLE_PREFIX = "REFLECTION_ORACLE_"
DEFAULT_MAX_TOKENS = 2048
DEFAULT_MAX_TOKENS_LOCAL = 64
DTYPES = ("auto", "float32", "bfloat16")
JUDGE_PREFIX = "REFLECTION_JUDGE_"


@dataclass(frozen=True)
class OracleSettings:
    backend: str = "local"
    model: str = EMBEDDED_MODEL
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never printed
    temperature: float = 0.0
    max_tokens: int | None = None  # 2048 (the paper's) for endpoints, 64 for the embedded model
    seed: int | None = None
    timeout_s: float = 120.0
    max_concurrency: int = 32
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute
    max_retries: int = 6
    budget_usd: float | None = None
    price_input_per_mtok: float | None = None  # overrides the price table, $ per 1M tokens
    price_output_per_mtok: float | None = None
    batch_size: int = 16  # the local backend's generation batch
    dtype: str = "auto"  # the local backend's precision: bfloat16 where the CPU/GPU has it
    flush_interval_s: float = 1.0  # replies reach the database at least this often
    progress_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"oracle backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.max_tokens is None:
            # The embedded model echoes the prompt and loops until the limit on nearly every
            # reply; at ~110 tokens/s on 2 cores, 2,048 tokens a reply would make the
            # 128-record sample take over two hours.
            default = DEFAULT_MAX_TOKENS_LOCAL if self.backend == "local" else DEFAULT_MAX_TOKENS
            object.__setattr__(self, "max_tokens", default)
        if self.dtype not in DTYPES:
            raise ValueError(f"oracle dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.backend == "openai" and not self.model:
            raise ValueError("the openai backend needs a model name (REFLECTION_ORACLE_MODEL)")
        for name in ("max_tokens", "max_concurrency", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"oracle setting {name}={getattr(self, name)}: expected 1 or more")
        if self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("oracle settings: max_retries must be >= 0 and timeout_s > 0")

    @property
    def sampling(self) -> SamplingSettings:
        # The local backend's precision changes its replies, so it is part of the identity.
        backend = f"local/{resolve_dtype(self.dtype)}" if self.backend == "local" else self.backend
        return SamplingSettings(backend, self.model, self.temperature, self.max_tokens or 0, self.seed)

    def fingerprint(self, prompt_version: str) -> str:
        return self.sampling.fingerprint(prompt_version)

    def described(self) -> dict[str, object]:
        """Settings safe to show in logs and metadata: everything but the API key."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}


# Environment variable suffix -> (field, type)
ENV_FIELDS = {
    "BACKEND": ("backend", str),
    "MODEL": ("model", str),
    "BASE_URL": ("base_url", str),
    "API_KEY": ("api_key", str),
    "TEMPERATURE": ("temperature", float),
    "MAX_TOKENS": ("max_tokens", int),
    "SEED": ("seed", int),
    "TIMEOUT": ("timeout_s", float),
    "MAX_CONCURRENCY": ("max_concurrency", int),
    "RPM": ("rpm", int),
    "TPM": ("tpm", int),
    "MAX_RETRIES": ("max_retries", int),
    "BUDGET_USD": ("budget_usd", float),
    "PRICE_INPUT": ("price_input_per_mtok", float),
    "PRICE_OUTPUT": ("price_output_per_mtok", float),
    "BATCH_SIZE": ("batch_size", int),
    "DTYPE": ("dtype", str),
}


def resolve_dtype(dtype: str) -> str:
    """`auto`: bfloat16 where the hardware computes it natively (measured 2x faster
    generation on this project's CPUs), float32 elsewhere."""
    if dtype != "auto":
        return dtype
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    supported = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bfloat16" if supported or amx else "float32"


def _read_env(prefix: str, environ: dict[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for suffix, (name, kind) in ENV_FIELDS.items():
        raw = environ.get(prefix + suffix)
        if raw is None or raw == "":
            continue
        try:
            values[name] = kind(raw)
        except ValueError:
            raise ValueError(
                f"{prefix}{suffix}={'***' if suffix == 'API_KEY' else repr(raw)}: "
                f"expected {'a number' if kind is not str else 'text'}"
            ) from None
    return values


def settings_from_env(
    prefix: str = ORACLE_PREFIX, environ: dict[str, str] | None = None, **overrides: object
) -> OracleSettings:
    """Settings from the environment; explicit overrides (not None) win.

    The judge (prefix REFLECTION_JUDGE_) inherits every oracle setting it does not set.
    A backend of `openai` without a model name is an error, and its API key falls back to
    OPENAI_API_KEY."""
    environ = dict(os.environ if environ is None else environ)
    values = _read_env(ORACLE_PREFIX, environ)
    if prefix != ORACLE_PREFIX:
        values.update(_read_env(prefix, environ))
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("backend") == "openai":
        values.setdefault("api_key", environ.get("OPENAI_API_KEY"))
        if "model" not in values:
            raise ValueError(
                f"{prefix}BACKEND=openai needs {prefix}MODEL (the model name the endpoint serves)"
            )
    return OracleSettings(**values)  # type: ignore[arg-type]

