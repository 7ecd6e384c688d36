"""The oracle's settings, in one place: each field of OracleSettings carries its default,
the suffix of its environment variable (REFLECTION_ORACLE_* for the oracle,
REFLECTION_JUDGE_* for the judge, each judge setting falling back to the oracle's) and what
it means. The environment reader, the Dagster resources' fields (with these descriptions)
and the table of docs/oracle.md come from here (tests/unit/test_settings.py checks it)."""

from __future__ import annotations

import functools
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

from reflection_assets.engines.oracle.kinds import BACKENDS, KINDS, BackendKind, kind_of
from reflection_assets.errors import SettingsError
from reflection_assets.method.profiles import AUTO, resolve_profile
from reflection_assets.method.requests import SamplingSettings
from reflection_assets.method.served import PROBE_ON, check_probe

MODES = ("online", "batch")
EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
ORACLE_PREFIX = "REFLECTION_ORACLE_"
DTYPES = ("auto", "float32", "bfloat16")
JUDGE_PREFIX = "REFLECTION_JUDGE_"


def setting(default: object, env: str, doc: str, **kw: object):
    """A field read from the environment variable PREFIX + `env`; `doc` says what it means."""
    return field(default=default, metadata={"env": env, "doc": doc}, **kw)  # type: ignore[call-overload]


@dataclass(frozen=True)
class OracleSettings:
    backend: str = setting("local", "BACKEND", "`local` (the embedded model, in-process) or `openai` (any OpenAI-compatible endpoint)")
    model: str = setting(EMBEDDED_MODEL, "MODEL", "model name at the endpoint; for `local`, a model folder or a cached Hugging Face id also works")
    base_url: str | None = setting(None, "BASE_URL", "any OpenAI-compatible `/v1` URL (default: OpenAI's)")
    api_key: str | None = setting(None, "API_KEY", "falls back to `OPENAI_API_KEY`; never logged, stored, or shown in metadata or errors", repr=False)
    temperature: float = setting(0.0, "TEMPERATURE", "sampling temperature, as in the paper")
    # 2048 (the paper's) for endpoints, 256 for the local backend: see __post_init__.
    max_tokens: int | None = setting(None, "MAX_TOKENS", "the reply's token limit (default 2048, 256 for `local`); the compact profile asks for less per section")
    seed: int | None = setting(None, "SEED", "sampling seed, where the backend takes one")
    timeout_s: float = setting(120.0, "TIMEOUT", "seconds per request")
    max_concurrency: int = setting(32, "MAX_CONCURRENCY", "requests in flight at most")
    rpm: int | None = setting(None, "RPM", "requests per minute (a token bucket)")
    tpm: int | None = setting(None, "TPM", "tokens per minute (a token bucket)")
    max_retries: int = setting(6, "MAX_RETRIES", "retries of a transient failure")
    budget_usd: float | None = setting(None, "BUDGET_USD", "stop sending once this much is spent in a run")
    price_input_per_mtok: float | None = setting(None, "PRICE_INPUT", "$ per 1M prompt tokens, for a model not in the price table")
    price_output_per_mtok: float | None = setting(None, "PRICE_OUTPUT", "$ per 1M completion tokens, for a model not in the price table")
    prompts: str = setting(AUTO, "PROMPTS", "the prompt profile: `paper`, `compact`, or `auto` (compact for `local`, paper for endpoints)")
    batch_size: int = setting(64, "BATCH_SIZE", "the local backend's generation batch (benchmarks/local_batch.py, pruned decoder, 2 cores: 1.27x the tokens/s of 32 on 128 records' requests)")
    dtype: str = setting("auto", "DTYPE", "the local backend's precision: `bfloat16` where the CPU or GPU computes it natively (`auto`), `float32` or `bfloat16`; part of the fingerprint")
    # Measured on the embedded model: 1.1 gives on-topic rewrites of 8 of 8 records against
    # loops without it; no 6-gram repeats lets 115 of 128 better answers finish, not 112.
    repetition_penalty: float = setting(1.1, "REPETITION_PENALTY", "the local backend's repetition penalty (1.0: off); part of the fingerprint")
    no_repeat_ngram: int = setting(6, "NO_REPEAT_NGRAM", "the local backend never repeats a run of this many tokens (0: off); part of the fingerprint")
    probe: str = setting(PROBE_ON, "PROBE", "what the observation checks besides our settings: `on` (the endpoint's model listing and a 1-token completion: the served model, `system_fingerprint`, vLLM's `root`, Ollama's digest; for `local`, a hash of the model file), `model` (the same without `system_fingerprint`) or `off` (only our settings count)")
    mode: str = setting("online", "MODE", "`online` (each request on its own) or `batch` (the OpenAI Batch API: half the price, up to 24 h; endpoints only)")
    batch_max_requests: int = setting(50_000, "BATCH_MAX_REQUESTS", "batch mode: requests per batch file at most (the Batch API takes 50,000 and 200 MB)")
    batch_poll_s: float = setting(30.0, "BATCH_POLL_S", "batch mode: seconds between looks at the batches in flight")
    batch_discount: float = setting(0.5, "BATCH_DISCOUNT", "batch mode: the batch price as a share of the price table's")
    flush_interval_s: float = 1.0  # replies reach the database at least this often
    progress_interval_s: float = 10.0

    def __post_init__(self) -> None:
        kind = self.kind  # an unknown backend fails here, with its name
        if self.max_tokens is None:  # the compact profile asks for less per section anyway
            object.__setattr__(self, "max_tokens", kind.default_max_tokens)
        if self.dtype not in DTYPES:
            raise SettingsError(f"oracle dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if kind.needs_model and not self.model:
            raise SettingsError(f"the {self.backend} backend needs a model name (REFLECTION_ORACLE_MODEL)")
        for name in ("max_tokens", "max_concurrency", "batch_size"):
            if getattr(self, name) < 1:
                raise SettingsError(f"oracle setting {name}={getattr(self, name)}: expected 1 or more")
        if self.max_retries < 0 or self.timeout_s <= 0:
            raise SettingsError("oracle settings: max_retries must be >= 0 and timeout_s > 0")
        if self.no_repeat_ngram < 0:
            raise SettingsError(f"oracle no_repeat_ngram={self.no_repeat_ngram}: expected 0 (off) or more")
        if self.repetition_penalty <= 0:
            raise SettingsError(f"oracle repetition_penalty={self.repetition_penalty}: expected a number above 0")
        resolve_profile(self.prompts, kind.default_profile)  # a bad value fails here, with its name
        check_probe(self.probe)
        if self.mode not in MODES:
            raise SettingsError(f"oracle mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.mode == "batch" and not kind.has_batch_api:
            raise SettingsError(
                f"oracle mode 'batch' needs the openai backend (an endpoint with a Batch API); the {self.backend} "
                "backend runs in-process, online. For a server without one, see `reflection batch export`"
            )
        if not 1 <= self.batch_max_requests <= 50_000:
            raise SettingsError(f"oracle batch_max_requests={self.batch_max_requests}: expected 1 to 50000 (the Batch API's limit)")
        if self.batch_poll_s <= 0 or not 0 < self.batch_discount <= 1:
            raise SettingsError("oracle settings: batch_poll_s must be above 0 and batch_discount in (0, 1]")

    @property
    def kind(self) -> BackendKind:
        """What the backend can do (engines/oracle/kinds.py)."""
        return kind_of(self.backend)

    @property
    def prompt_profile(self) -> str:
        """paper or compact: what `prompts` means for this backend."""
        return resolve_profile(self.prompts, self.kind.default_profile)

    @property
    def sampling(self) -> SamplingSettings:
        # An in-process model's precision and repetition rules change its replies, so they
        # are part of the identity (the rules only when they are on).
        backend = self.backend
        if self.kind.in_process:
            backend = f"{self.backend}/{resolve_dtype(self.dtype)}"
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


def _kind(annotation: object) -> type:
    """str, int or float: the type a field's environment value is read as."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation  # type: ignore[return-value]


@dataclass(frozen=True)
class EnvSetting:
    name: str  # the field of the settings class
    env: str  # the suffix after the prefix (REFLECTION_ORACLE_, REFLECTION_JUDGE_, ...)
    kind: type
    doc: str
    default: object


def env_settings(cls: type = OracleSettings) -> list[EnvSetting]:
    """Every setting of a settings class (OracleSettings by default, or any dataclass whose
    fields are made with `setting`) read from the environment, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [
        EnvSetting(f.name, f.metadata["env"], _kind(hints[f.name]), f.metadata["doc"], f.default)
        for f in fields(cls)
        if "env" in f.metadata
    ]


def resolve_dtype(dtype: str) -> str:
    """`auto`: bfloat16 where the hardware computes it natively (measured 2x faster
    generation on this project's CPUs), float32 elsewhere. It is part of an in-process
    model's fingerprint, which `reflection status` and every run's observation compute: on
    a host without a GPU the answer is kept per CPU and torch version (hardware_answer), so
    that they need not import torch (1.5 s of a 2-core machine) to know it."""
    if dtype != "auto":
        return dtype
    return _auto_dtype()


@functools.cache
def _auto_dtype() -> str:
    """Once per process: a local backend's settings build every request's sampling, and the
    answer cannot change while the process runs."""
    return hardware_answer("dtype", _dtype_from_torch)


def _dtype_from_torch() -> str:
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    supported = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bfloat16" if supported or amx else "float32"


# Device files of a GPU that torch may use (NVIDIA, AMD's ROCm, WSL): where one exists,
# what torch answers can change with drivers and CUDA_VISIBLE_DEVICES, so it is asked.
_GPU_DEVICES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def _cpu_host_key() -> str | None:
    """What torch's answer on a host without a GPU depends on: the CPU (its model and the
    flags the kernel reports) and torch's version. None where that cannot be known."""
    import hashlib
    import platform
    from importlib import metadata

    if any(os.path.exists(device) for device in _GPU_DEVICES):
        return None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            first = handle.read().split("\n\n", 1)[0]
        version = metadata.version("torch")
    except (OSError, metadata.PackageNotFoundError):
        return None
    cpu = [line for line in first.splitlines() if line.split(":", 1)[0].strip() in ("model name", "flags", "Features")]
    if not cpu:
        return None
    return hashlib.sha256("\n".join([platform.machine(), version, *cpu]).encode()).hexdigest()[:16]


def hardware_answer(name: str, ask: Callable[[], str]) -> str:
    """`ask()` (which imports torch), kept in the user's cache folder per CPU and torch
    version on a host without a GPU, and asked anew everywhere else; a cache that cannot be
    read or written only costs the import."""
    key = _cpu_host_key()
    if key is None:
        return ask()
    folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "reflection-assets")
    path = os.path.join(folder, f"{name}-{key}")
    try:
        with open(path, encoding="utf-8") as handle:
            kept = handle.read().strip()
        if kept:
            return kept
    except OSError:
        pass
    answer = ask()
    try:
        os.makedirs(folder, exist_ok=True)
        partial = f"{path}.{os.getpid()}.partial"
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(answer)
        os.replace(partial, path)
    except OSError:
        pass
    return answer


def _read_env(prefix: str, environ: Mapping[str, str], cls: type = OracleSettings) -> dict[str, tuple[object, str]]:
    """{field: (value, the variable it came from)} for the variables set under `prefix`."""
    values: dict[str, tuple[object, str]] = {}
    for entry in env_settings(cls):
        variable = prefix + entry.env
        raw = environ.get(variable)
        if raw is None or raw == "":
            continue
        try:
            values[entry.name] = (entry.kind(raw), variable)
        except ValueError:
            shown = "***" if entry.name == "api_key" else repr(raw)
            raise SettingsError(
                f"{variable}={shown}: expected {'a number' if entry.kind is not str else 'text'}"
            ) from None
    return values


def _override(found: dict[str, tuple[object, str]], overrides: Mapping[str, object]) -> None:
    """Explicit values (not None) over what the environment gave. A value equal to its
    variable's keeps the variable as its source: the code location's resources take each
    variable that is set as a `dg.EnvVar` field (assets/resources.env_var_values), which
    reaches here resolved."""
    for name, value in overrides.items():
        if value is not None and not (name in found and found[name][0] == value):
            found[name] = (value, "resource")


def read_settings(
    cls: type, prefix: str, environ: Mapping[str, str] | None = None, **overrides: object
) -> tuple[object, dict[str, str]]:
    """A settings class filled from the environment under `prefix`, explicit overrides (not
    None) winning, and where each value came from (the variable, `resource`, or `default`).
    The oracle and the judge add their own rules on top (settings_with_sources)."""
    found = _read_env(prefix, os.environ if environ is None else environ, cls)
    _override(found, overrides)
    settings = cls(**{name: value for name, (value, _) in found.items()})
    return settings, {e.name: found[e.name][1] if e.name in found else "default" for e in env_settings(cls)}


def settings_with_sources(
    prefix: str = ORACLE_PREFIX, environ: dict[str, str] | None = None, **overrides: object
) -> tuple[OracleSettings, dict[str, str]]:
    """The settings and, for each field, where its value came from: the environment
    variable's name, `resource` (an explicit value), or `default`.

    Explicit overrides (not None) win over the environment. The judge (prefix
    REFLECTION_JUDGE_) inherits every oracle setting it does not set. A backend of `openai`
    without a model name is an error, and its API key falls back to OPENAI_API_KEY."""
    environ = dict(os.environ if environ is None else environ)
    found = _read_env(ORACLE_PREFIX, environ)
    if prefix != ORACLE_PREFIX:
        found.update(_read_env(prefix, environ))
    _override(found, overrides)
    kind = KINDS.get(found.get("backend", ("local",))[0])  # an unknown one fails in OracleSettings
    if kind is not None and kind.needs_model:
        if "api_key" not in found and environ.get("OPENAI_API_KEY"):
            found["api_key"] = (environ["OPENAI_API_KEY"], "OPENAI_API_KEY")
        if "model" not in found:
            raise SettingsError(
                f"{prefix}BACKEND=openai needs {prefix}MODEL (the model name the endpoint serves)"
            )
    settings = OracleSettings(**{name: value for name, (value, _) in found.items()})  # type: ignore[arg-type]
    sources = {entry.name: found[entry.name][1] if entry.name in found else "default" for entry in env_settings()}
    return settings, sources


def settings_from_env(
    prefix: str = ORACLE_PREFIX, environ: dict[str, str] | None = None, **overrides: object
) -> OracleSettings:
    """The settings alone (see settings_with_sources)."""
    return settings_with_sources(prefix, environ, **overrides)[0]
