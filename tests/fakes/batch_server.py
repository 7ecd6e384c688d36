"""A scripted OpenAI Batch API on 127.0.0.1, for tests: the files and batches endpoints as
the official SDK calls them (POST /v1/files multipart, GET /v1/files/{id}/content, POST
/v1/batches, GET /v1/batches/{id}, GET /v1/batches, POST /v1/batches/{id}/cancel), plus
chat completions and the model listing for the oracle's probe.

A batch advances one state per retrieve (validating, in_progress, finalizing, then its end);
it stays in_progress while `hold` is set (a test can kill the poller mid-wait) and for
`latency_s` after it was created (a benchmark's batch that takes its time). Its
end comes from `batch_plan(n)` for the n-th batch created: "complete", "expire" (half its
lines answered, the rest expired), "fail" (validation failed: no line run), "cancel" (the
provider cancels it: half its lines answered). Each line's fate comes from
`line_plan(custom_id, body, attempt)`, attempt counting how often this custom_id was put in a
batch: "ok", ("status", code, message) in the error file, or ("error", code, message) as an
error object. `answered` counts the 200 answers per custom_id: a test checks none came twice.
It stops itself when the `with` block ends."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable

from aiohttp import web

from tests.fakes.local_server import LocalServer
from tests.fakes.openai_server import default_reply

TERMINAL = ("completed", "expired", "failed", "cancelled")


class FakeBatchAPI(LocalServer):
    name = "fake-batch-api"
    client_max_size = 256 * 1024 * 1024

    def __init__(
        self,
        responder: Callable[[dict], str] = default_reply,
        line_plan: Callable[[str, dict, int], object] | None = None,
        batch_plan: Callable[[int], str] | None = None,
        served_model: str | None = None,
        latency_s: float = 0.0,
    ):
        super().__init__()
        self.responder = responder
        self.line_plan = line_plan or (lambda custom_id, body, attempt: "ok")
        self.batch_plan = batch_plan or (lambda n: "complete")
        self.served_model = served_model
        self.hold = False  # batches stay in_progress while set
        self.latency_s = latency_s  # and for at least this long after they were created
        self.files: dict[str, dict] = {}  # id -> {"bytes", "purpose", "filename"}
        self.batches: dict[str, dict] = {}
        self.created: list[str] = []  # batch ids in creation order
        self.created_at: list[float] = []  # when each was created (time.time(), unrounded)
        self.uploads = 0
        self.retrieves = 0
        self.cancels: list[str] = []
        self.placed: Counter[str] = Counter()  # custom_id -> batches it was put in
        self.answered: Counter[str] = Counter()  # custom_id -> 200 answers given
        self.chat: list[dict] = []  # online chat completions (a batch run must send none)
        self.probes = 0
        self._lock = threading.Lock()

    # -- files ---------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        data = upload.file.read()  # type: ignore[union-attr]
        with self._lock:
            self.uploads += 1
            file_id = f"file-in-{len(self.files) + 1}"
            self.files[file_id] = {"bytes": data, "purpose": form.get("purpose"), "filename": upload.filename}  # type: ignore[union-attr]
        return web.json_response(self._file_object(file_id))

    def _file_object(self, file_id: str) -> dict:
        entry = self.files[file_id]
        return {
            "id": file_id, "object": "file", "bytes": len(entry["bytes"]), "created_at": int(time.time()),
            "filename": entry["filename"] or "batch.jsonl", "purpose": entry["purpose"] or "batch", "status": "processed",
        }

    async def _content(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        if file_id not in self.files:
            return web.json_response({"error": {"message": f"No such File object: {file_id}"}}, status=404)
        return web.Response(body=self.files[file_id]["bytes"], content_type="application/octet-stream")

    def _store(self, prefix: str, lines: list[dict]) -> str | None:
        if not lines:
            return None
        file_id = f"{prefix}-{len(self.files) + 1}"
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        self.files[file_id] = {"bytes": data, "purpose": "batch_output", "filename": f"{prefix}.jsonl"}
        return file_id

    # -- batches -------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("input_file_id") not in self.files:
            return web.json_response({"error": {"message": "input file not found"}}, status=400)
        with self._lock:
            batch_id = f"batch_{len(self.created) + 1}"
            self.created.append(batch_id)
            self.created_at.append(time.time())
            lines = [json.loads(line) for line in self.files[body["input_file_id"]]["bytes"].decode().splitlines() if line]
            for line in lines:
                self.placed[line["custom_id"]] += 1
            now = int(time.time())
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "errors": None,
                "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
                "status": "validating", "output_file_id": None, "error_file_id": None,
                "created_at": now, "expires_at": now + 86400, "metadata": body.get("metadata"),
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "_lines": lines, "_end": self.batch_plan(len(self.created)),
                "_ready_at": time.monotonic() + self.latency_s,
            }
        return web.json_response(self._public(batch_id))

    def _public(self, batch_id: str) -> dict:
        return {k: v for k, v in self.batches[batch_id].items() if not k.startswith("_")}

    def _advance(self, batch_id: str) -> None:
        batch = self.batches[batch_id]
        status = batch["status"]
        if status in TERMINAL:
            return
        if status == "cancelling":
            self._finish(batch, "cancelled", run=len(batch["_lines"]) // 2)
        elif status == "validating":
            if batch["_end"] == "fail":
                batch["status"] = "failed"
                batch["failed_at"] = int(time.time())
                batch["errors"] = {"object": "list", "data": [
                    {"code": "invalid_request", "message": "line 1: the model gpt-unknown does not exist", "line": 1}
                ]}
            else:
                batch["status"], batch["in_progress_at"] = "in_progress", int(time.time())
        elif status == "in_progress" and not self.hold and time.monotonic() >= batch["_ready_at"]:
            end = batch["_end"]
            if end == "expire":
                self._finish(batch, "expired", run=len(batch["_lines"]) // 2)
            elif end == "cancel":
                batch["status"] = "cancelling"
            else:
                batch["status"] = "finalizing"
        elif status == "finalizing":
            self._finish(batch, "completed", run=len(batch["_lines"]))

    def _finish(self, batch: dict, status: str, run: int) -> None:
        outputs, errors = [], []
        for line in batch["_lines"][:run]:
            custom_id, body = line["custom_id"], line["body"]
            fate = self.line_plan(custom_id, body, self.placed[custom_id])
            request_id = f"req_{custom_id[:8]}"
            if fate == "ok":
                self.answered[custom_id] += 1
                text = self.responder(body)
                completion = {
                    "id": f"chatcmpl-{custom_id[:8]}", "object": "chat.completion", "created": int(time.time()),
                    "model": self.served_model or body["model"], "system_fingerprint": "fp_batch",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": len(text) // 4 + 1,
                              "total_tokens": 10 + len(text) // 4 + 1},
                }
                outputs.append({"id": f"batch_req_{custom_id[:8]}", "custom_id": custom_id,
                                "response": {"status_code": 200, "request_id": request_id, "body": completion}, "error": None})
            elif fate[0] == "status":
                errors.append({"id": f"batch_req_{custom_id[:8]}", "custom_id": custom_id,
                               "response": {"status_code": fate[1], "request_id": request_id,
                                            "body": {"error": {"message": fate[2], "type": "server_error"}}},
                               "error": None})
            else:  # ("error", code, message)
                errors.append({"id": f"batch_req_{custom_id[:8]}", "custom_id": custom_id, "response": None,
                               "error": {"code": fate[1], "message": fate[2]}})
        for line in batch["_lines"][run:]:
            if status == "expired":
                errors.append({"id": f"batch_req_{line['custom_id'][:8]}", "custom_id": line["custom_id"], "response": None,
                               "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}})
        batch["status"] = status
        batch[f"{status}_at"] = int(time.time())
        batch["output_file_id"] = self._store("file-out", outputs)
        batch["error_file_id"] = self._store("file-err", errors)
        batch["request_counts"] = {"total": len(batch["_lines"]), "completed": len(outputs), "failed": len(errors)}

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["batch_id"]
        if batch_id not in self.batches:
            return web.json_response({"error": {"message": f"No such batch: {batch_id}"}}, status=404)
        with self._lock:
            self.retrieves += 1
            self._advance(batch_id)
            return web.json_response(self._public(batch_id))

    async def _cancel(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["batch_id"]
        with self._lock:
            self.cancels.append(batch_id)
            batch = self.batches[batch_id]
            if batch["status"] not in TERMINAL:
                batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
                batch["_end"] = "cancelled by the user"
            return web.json_response(self._public(batch_id))

    async def _list(self, request: web.Request) -> web.Response:
        data = [self._public(b) for b in reversed(self.created)]
        return web.json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None, "has_more": False})

    # -- online (the probe, and anything that should not happen in batch mode) -------------

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("max_tokens") == 1:
            self.probes += 1
        else:
            self.chat.append(body)
        return web.json_response({
            "id": "chatcmpl-probe", "object": "chat.completion", "created": int(time.time()),
            "model": self.served_model or body["model"], "system_fingerprint": "fp_online",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        })

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{file_id}/content", self._content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list)
        app.router.add_get("/v1/batches/{batch_id}", self._retrieve)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self._cancel)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
