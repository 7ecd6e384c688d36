"""The lines of batch files, both ways: requests as OpenAI batch input lines (`custom_id` =
the request key, `method`, `url`, `body`), split into files the Batch API takes, and output
lines, in the OpenAI Batch API's layout (output and error files) or `vllm run-batch`'s (one
file, `error` per line), read back into replies or failures."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reflection_assets.engines.oracle.replies import BackendReply
from reflection_assets.errors import UserError
from reflection_assets.method.requests import OracleRequest

CHAT_URL = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
# The Batch API takes input files of up to 200 MB; a little under it, for the multipart
# envelope and a margin.
MAX_FILE_BYTES = 190 * 1024 * 1024
TRANSIENT_STATUSES = {408, 409, 425, 429}


class BatchFileError(UserError):
    """A batch file that cannot be read. The message names the file, the line and what was
    expected."""


def chat_body(request: OracleRequest) -> dict[str, object]:
    """The chat-completions body of a request, as the online backend sends it too: model,
    messages, sampling, stop, and vLLM's fields for continuing an assistant turn."""
    sampling = request.sampling
    body: dict[str, object] = {
        "model": sampling.model,
        "messages": request.chat_messages(),
        "temperature": sampling.temperature,
        "max_tokens": sampling.max_tokens,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if request.stop:
        body["stop"] = list(request.stop)
    if request.continues:
        body.update(CONTINUE_FIELDS)
    return body


# vLLM continues the final assistant message when asked to (see backends.OpenAIBackend).
CONTINUE_FIELDS = {"continue_final_message": True, "add_generation_prompt": False}


def request_line(request: OracleRequest) -> str:
    return json.dumps(
        {"custom_id": request.key, "method": "POST", "url": CHAT_URL, "body": chat_body(request)}, ensure_ascii=False
    ) + "\n"


def split_files(
    requests: Sequence[OracleRequest], max_requests: int, max_bytes: int = MAX_FILE_BYTES
) -> list[list[tuple[OracleRequest, str]]]:
    """Requests with their lines, in files of at most `max_requests` lines and `max_bytes`."""
    files: list[list[tuple[OracleRequest, str]]] = []
    current: list[tuple[OracleRequest, str]] = []
    size = 0
    for request in requests:
        line = request_line(request)
        width = len(line.encode("utf-8"))
        if width > max_bytes:
            raise BatchFileError(f"request {request.key[:12]} is {width:,} bytes as a batch line: over the {max_bytes:,}-byte file limit")
        if current and (len(current) >= max_requests or size + width > max_bytes):
            files.append(current)
            current, size = [], 0
        current.append((request, line))
        size += width
    if current:
        files.append(current)
    return files


@dataclass(frozen=True)
class LineResult:
    """One output line: a reply, or why there is none."""

    custom_id: str
    reply: BackendReply | None = None
    status: int | None = None  # the HTTP status of a failed line, when it had one
    message: str = ""
    transient: bool = True  # failed lines worth another batch: 5xx, 429, timeouts, expiry

    @property
    def ok(self) -> bool:
        return self.reply is not None


def _reply(body: dict) -> BackendReply:
    choices = body.get("choices") or []
    if not choices:
        raise ValueError("no choices")
    choice = choices[0]
    text = (choice.get("message") or {}).get("content") or ""
    usage = body.get("usage") or {}
    return BackendReply(
        text,
        choice.get("finish_reason"),
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or len(text) // 4),
        body.get("model") or None,
        body.get("system_fingerprint") or None,
    )


def read_line(data: object) -> LineResult:
    """One parsed output line (a dict) of either layout. Raises ValueError when it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("custom_id"), str):
        raise ValueError("expected an object with a `custom_id`")
    custom_id = data["custom_id"]
    error, response = data.get("error"), data.get("response")
    if error:
        if isinstance(error, dict):
            code, message = error.get("code"), error.get("message") or json.dumps(error)
        else:
            code, message = None, str(error)
        # An expired line, an error object: the request never ran, or not to the end.
        return LineResult(custom_id, status=None, message=f"{code}: {message}" if code else str(message))
    if not isinstance(response, dict):
        raise ValueError("expected `response` (an object) or `error`")
    status = int(response.get("status_code") or 200)
    body = response.get("body")
    if status != 200:
        inner = body.get("error", body) if isinstance(body, dict) else body
        message = inner.get("message") if isinstance(inner, dict) else str(inner)
        transient = status >= 500 or status in TRANSIENT_STATUSES
        return LineResult(custom_id, status=status, message=f"HTTP {status}: {message}", transient=transient)
    if not isinstance(body, dict):
        raise ValueError("expected `response.body`, a chat completion")
    try:
        return LineResult(custom_id, reply=_reply(body))
    except (ValueError, TypeError, AttributeError) as exc:
        return LineResult(custom_id, status=status, message=f"malformed completion in the batch output: {exc}")


def read_lines(text: str, source: str) -> list[LineResult]:
    """Every line of an output file's text; a line that is not one names `source` and its
    number."""
    results = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            results.append(read_line(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise BatchFileError(f"{source}: line {number}, column {exc.colno}: not valid JSON ({exc.msg})") from None
        except ValueError as exc:
            raise BatchFileError(
                f"{source}: line {number}: {exc}; expected a batch output line (OpenAI's layout or vllm run-batch's)"
            ) from None
    return results


def lines_by_id(results: Iterable[LineResult]) -> dict[str, LineResult]:
    """One result per custom id: a reply wins over a failure of the same request."""
    out: dict[str, LineResult] = {}
    for result in results:
        if result.custom_id not in out or result.ok:
            out[result.custom_id] = result
    return out
