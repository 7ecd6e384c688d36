"""Oracle settings read from the environment: REFLECTION_ORACLE_* for the oracle and
REFLECTION_JUDGE_* for the judge, each judge setting falling back to the oracle's."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from reflection_assets.errors import SettingsError
from reflection_assets.method.profiles import AUTO, resolve_profile
from reflection_assets.method.requests import SamplingSettings

BACKENDS = ("local", "openai")
EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
ORACLE_PREFIX = "REFLECTION_ORACLE_"
DEFAULT_MAX_TOKENS = 2048
DEFAULT_MAX_TOKENS_LOCAL = 256
DTYPES = ("auto", "float32", "bfloat16")
JUDGE_PREFIX = "REFLECTION_JUDGE_"


@dataclass(frozen=True)
class OracleSettings:
    backend: str = "local"
    model: str = EMBEDDED_MODEL
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never printed
    temperature: float = 0.0
    max_tokens: int | None = None  # 2048 (the paper's) for endpoints, 256 for the local backend
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
    # The local backend's repetition penalty: 1.1 keeps the small model from looping (measured:
    # on-topic rewrites of 8 of 8 records, against loops without it); 1.0 turns it off.
    repetition_penalty: float = 1.1
    # The local backend never repeats a run of this many tokens (0: off). Measured on the
    # embedded model's better answers: 115 of 128 finish instead of 112, the rest looping.
    no_repeat_ngram: int = 6
    prompts: str = AUTO  # auto | paper | compact: the prompt profile (method/profiles.py)
    flush_interval_s: float = 1.0  # replies reach the database at least this often
    progress_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise SettingsError(f"oracle backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.max_tokens is None:
            # At ~110 tokens/s on 2 cores, 2,048 tokens a reply would make the 128-record
            # sample take hours; the compact profile asks for less per section anyway.
            default = DEFAULT_MAX_TOKENS_LOCAL if self.backend == "local" else DEFAULT_MAX_TOKENS
            object.__setattr__(self, "max_tokens", default)
        if self.dtype not in DTYPES:
            raise SettingsError(f"oracle dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.backend == "openai" and not self.model:
            raise SettingsError("the openai backend needs a model name (REFLECTION_ORACLE_MODEL)")
        for name in ("max_tokens", "max_concurrency", "batch_size"):
            if getattr(self, name) < 1:
                raise SettingsError(f"oracle setting {name}={getattr(self, name)}: expected 1 or more")
        if self.max_retries < 0 or self.timeout_s <= 0:
            raise SettingsError("oracle settings: max_retries must be >= 0 and timeout_s > 0")
        if self.no_repeat_ngram < 0:
            raise SettingsError(f"oracle no_repeat_ngram={self.no_repeat_ngram}: expected 0 (off) or more")
        if self.repetition_penalty <= 0:
            raise SettingsError(f"oracle repetition_penalty={self.repetition_penalty}: expected a number above 0")
        resolve_profile(self.prompts, self.backend)  # a bad value fails here, with its name

    @property
    def prompt_profile(self) -> str:
        """paper or compact: what `prompts` means for this backend."""
        return resolve_profile(self.prompts, self.backend)

    @property
    def sampling(self) -> SamplingSettings:
        # The local backend's precision and repetition penalty change its replies, so they
        # are part of the identity (the penalty only when it is on).
        backend = self.backend
        if self.backend == "local":
            backend = f"local/{resolve_dtype(self.dtype)}"
            if self.repetition_penalty != 1.0:
                backend += f"/rp{self.repetition_penalty:g}"
            if self.no_repeat_ngram:
                backend += f"/nr{self.no_repeat_ngram}"
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
    "REPETITION_PENALTY": ("repetition_penalty", float),
    "NO_REPEAT_NGRAM": ("no_repeat_ngram", int),
    "PROMPTS": ("prompts", str),
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
            raise SettingsError(
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
            raise SettingsError(
                f"{prefix}BACKEND=openai needs {prefix}MODEL (the model name the endpoint serves)"
            )
    return OracleSettings(**values)  # type: ignore[arg-type]

