"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests and benchmarks.

It answers POST /v1/chat/completions, can add latency (with jitter) and a server-side
concurrency cap (extra requests queue, as vLLM's do), and injects faults through a `plan`:
a function of (body, nth time this exact body arrived) returning an action:
    "ok" | "length" | "drop" | "malformed" | ("status", code, message[, retry_after])
`latency_for(body)` may give one request a latency of its own. It counts what it received
and stops itself when the `with` block ends.

Like a real provider it names what served each completion: `served_model` (a snapshot name,
or None to echo the requested name) and `system_fingerprint`, both attributes a test may
change mid-run (a new snapshot behind the same name), and lists its models at GET
/v1/models (with vLLM's `root` when `root` is set). The oracle's probe (a 1-token completion
of identity.PROBE_MESSAGE) is counted in `probes`, not in `received`, and follows
`probe_plan` (the same actions, plus ("sleep", seconds))."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable

from aiohttp import web

from tests.fakes.local_server import LocalServer

Plan = Callable[[dict, int], object]


def default_reply(body: dict) -> str:
    last = body["messages"][-1]["content"]
    return f"reply to: {last[:60]}"


def body_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class FakeOpenAI(LocalServer):
    name = "fake-openai"
    backlog = 4096

    def __init__(
        self,
        latency_s: float = 0.0,
        jitter_s: float = 0.0,
        max_concurrency: int | None = None,
        plan: Plan | None = None,
        responder: Callable[[dict], str] = default_reply,
        seed: int = 0,
        latency_for: Callable[[dict], float | None] | None = None,
        served_model: str | None = None,
        system_fingerprint: str | None = None,
        probe_plan: Callable[[int], object] | None = None,
    ):
        super().__init__()
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.max_concurrency = max_concurrency
        self.plan = plan or (lambda body, nth: "ok")
        self.responder = responder
        self.latency_for = latency_for  # a per-request latency overriding latency_s
        self.served_model = served_model
        self.system_fingerprint = system_fingerprint
        self.listed_model = "gpt-4o-mini"  # the name the listing serves
        self.root: str | None = None  # vLLM's `root` in the model listing
        self.ollama_digest: str | None = None  # set: GET /api/tags answers as Ollama's does
        self.probe_plan = probe_plan or (lambda nth: "ok")
        self.probes: list[dict] = []  # the probe's completions
        self.listings = 0  # GET /v1/models
        self.random = random.Random(seed)
        self.received: list[dict] = []  # every request body, in arrival order
        self.by_body: Counter[str] = Counter()
        self.headers: list[dict] = []
        self.answered = 0  # 200 replies with a valid body
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()

    @property
    def request_count(self) -> int:
        return len(self.received)

    @staticmethod
    def is_probe(body: dict) -> bool:
        from reflection_assets.engines.oracle.identity import PROBE_MESSAGE

        return body.get("max_tokens") == 1 and body["messages"][-1]["content"] == PROBE_MESSAGE

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ConnectionResetError:  # the client died mid-request (the crash tests kill it)
            return web.Response(status=499)
        if self.is_probe(body):
            self.probes.append(body)
            action = self.probe_plan(len(self.probes))
            if isinstance(action, tuple) and action[0] == "sleep":
                await asyncio.sleep(action[1])
                action = "ok"
            return self._respond(request, body, action)
        with self._lock:
            self.received.append(body)
            self.headers.append(dict(request.headers))
            key = body_key(body)
            self.by_body[key] += 1
            nth = self.by_body[key]
            delay = self.latency_s + (self.random.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0)
        action = self.plan(body, nth)
        special = self.latency_for(body) if self.latency_for else None
        if special is not None:
            delay = special
        if self._slots is not None:
            await self._slots.acquire()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            return self._respond(request, body, action)
        finally:
            self.in_flight -= 1
            if self._slots is not None:
                self._slots.release()

    def _respond(self, request: web.Request, body: dict, action: object) -> web.StreamResponse:
        if isinstance(action, tuple) and action[0] == "status":
            code, message = action[1], action[2]
            headers = {"retry-after": str(action[3])} if len(action) > 3 else {}
            error = {"error": {"message": message, "type": "fake_error", "code": code}}
            return web.json_response(error, status=code, headers=headers)
        if action == "drop":
            assert request.transport is not None
            request.transport.abort()  # the client sees the connection reset
            return web.Response(status=500)
        if action == "malformed":
            return web.Response(text='{"id": "x", "choices": [', content_type="application/json")
        text = "OK" if self.is_probe(body) else self.responder(body)
        finish = "stop"
        if action == "length":
            text, finish = text[: max(1, len(text) // 2)], "length"
        prompt_tokens = sum(len(m["content"]) for m in body["messages"]) // 4 + 1
        with self._lock:
            self.answered += 1
        return web.json_response(
            {
                "id": f"chatcmpl-{self.answered}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.served_model or body["model"],
                "system_fingerprint": self.system_fingerprint,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(text) // 4 + 1,
                    "total_tokens": prompt_tokens + len(text) // 4 + 1,
                },
            }
        )

    async def _models(self, request: web.Request) -> web.Response:
        self.listings += 1
        entry = {"id": self.listed_model, "object": "model", "created": 0, "owned_by": "fake"}
        if self.root:
            entry["root"] = self.root
        return web.json_response({"object": "list", "data": [entry]})

    async def _ollama_tags(self, request: web.Request) -> web.Response:
        if self.ollama_digest is None:
            return web.json_response({"error": "404 page not found"}, status=404)
        entry = {"name": f"{self.listed_model}:latest", "model": f"{self.listed_model}:latest", "digest": self.ollama_digest}
        return web.json_response({"models": [entry]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"received": self.request_count, "answered": self.answered, "peak_in_flight": self.peak_in_flight}
        )

    def routes(self, app: web.Application) -> None:
        self._slots = asyncio.Semaphore(self.max_concurrency) if self.max_concurrency else None
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/api/tags", self._ollama_tags)
        app.router.add_get("/stats", self._stats)


def main() -> None:
    """Serve from a process of its own (benchmarks): prints the port, runs until stdin closes."""
    import argparse
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--cap", type=int, default=None, help="server-side concurrency cap")
    parser.add_argument("--rate-429", type=float, default=0.0, help="share of requests answered 429")
    parser.add_argument("--retry-after", type=float, default=0.5)
    args = parser.parse_args()
    rng = random.Random(1)

    def plan(body: dict, nth: int) -> object:
        if args.rate_429 and rng.random() < args.rate_429:
            return ("status", 429, "rate limit reached", args.retry_after)
        return "ok"

    with FakeOpenAI(latency_s=args.latency, jitter_s=args.jitter, max_concurrency=args.cap, plan=plan) as server:
        print(server.port, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
