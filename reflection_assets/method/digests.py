"""Content digests: every id this project derives from content (request keys, record ids,
adapter ids, generation and loss keys, source versions) is a sha256 of text or of canonical
JSON, made here. Pure: no I/O.

Each caller keeps the JSON spelling its ids were first made with (`ascii`, `compact`):
changing it would change every stored id, and with it what the caches find."""

from __future__ import annotations

import hashlib
import json


def text_digest(text: str, length: int = 64) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def json_digest(payload: object, *, ascii: bool, compact: bool = False, length: int = 16) -> str:
    """sha256 of `payload` as JSON with sorted keys."""
    separators = (",", ":") if compact else (", ", ": ")
    return text_digest(json.dumps(payload, sort_keys=True, ensure_ascii=ascii, separators=separators), length)
