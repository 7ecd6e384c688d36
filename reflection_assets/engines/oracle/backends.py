"""Oracle backends: any OpenAI-compatible endpoint through the official async client, and
the embedded model run in-process with transformers. Both answer one request at a time
through `complete`; the client around them owns concurrency, retries and the cache."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from reflection_assets.engines.oracle.batch_lines import CONTINUE_FIELDS, TRANSIENT_STATUSES, chat_body
from reflection_assets.engines.oracle.limits import parse_retry_after
from reflection_assets.engines.oracle.replies import BackendError, BackendReply
from reflection_assets.engines.oracle.settings import OracleSettings
from reflection_assets.method.requests import YES_SCORE, OracleRequest

if TYPE_CHECKING:
    import openai  # imported where it is used: it takes over a second, and most processes never call it


class Backend(Protocol):
    """What the client needs of a backend: how many requests it wants in flight, an async
    context for its session (a connection pool, a loaded model), and one request answered
    (or a BackendError)."""

    concurrency: int

    async def __aenter__(self) -> "Backend": ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def complete(self, request: OracleRequest) -> BackendReply: ...


_KEY_LIKE = re.compile(r"\b(sk|key|api)[-_][A-Za-z0-9*_\-]{6,}", re.IGNORECASE)


def redact(text: str, secret: str | None) -> str:
    """Error texts from providers may quote the key ("Incorrect API key provided: sk-...")."""
    if secret:
        text = text.replace(secret, "***")
    return _KEY_LIKE.sub("***", text)


class OpenAIBackend:
    """Chat completions against any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp
    server, Ollama). The SDK's own retries are off: the client retries transient failures
    itself, up to MAX_RETRIES times, with backoff and the concurrency limit in view."""

    def __init__(self, settings: OracleSettings):
        self.settings = settings
        self.concurrency = settings.max_concurrency
        self._client: openai.AsyncOpenAI | None = None

    async def __aenter__(self) -> "OpenAIBackend":
        # The async client belongs to the event loop it was made in: one per session.
        import openai

        self._client = openai.AsyncOpenAI(
            api_key=self.settings.api_key or "unset",
            base_url=self.settings.base_url,
            timeout=self.settings.timeout_s,
            max_retries=0,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _error(self, message: str, **kw: object) -> BackendError:
        return BackendError(redact(message, self.settings.api_key), **kw)  # type: ignore[arg-type]

    async def complete(self, request: OracleRequest) -> BackendReply:
        import openai

        assert self._client is not None, "use the backend inside `async with`"
        if request.constraint is not None:
            raise self._error(
                f"the {request.constraint} constraint needs the local backend; endpoints use the paper profile's judge",
                transient=False,
            )
        body = chat_body(request)
        # vLLM continues the final assistant message when asked to. (Checked: the
        # llama-cpp-python server accepts these fields and ignores them, closing the
        # message and starting a new turn; its reply is still parsed as the section.)
        extra = {name: body.pop(name) for name in CONTINUE_FIELDS if name in body}
        try:
            response = await self._client.chat.completions.create(**body, extra_body=extra or None)  # type: ignore[call-overload]
        except openai.APIStatusError as exc:
            status = exc.status_code
            headers = exc.response.headers
            retry_after = parse_retry_after(headers.get("retry-after"))
            if retry_after is None and headers.get("retry-after-ms"):
                retry_after = float(headers["retry-after-ms"]) / 1000
            transient = status >= 500 or status in TRANSIENT_STATUSES
            raise self._error(
                f"HTTP {status}: {_status_message(exc)}",
                transient=transient,
                status=status,
                retry_after=retry_after,
                throttled=status == 429,
            ) from None
        except openai.APITimeoutError:
            raise self._error(
                f"no reply within {self.settings.timeout_s:.0f} s (timeout)", transient=True
            ) from None
        except openai.APIConnectionError as exc:
            raise self._error(f"connection failed: {exc.__cause__ or exc}", transient=True) from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            # A malformed body (invalid JSON, missing fields) is a server hiccup.
            raise self._error(f"malformed response: {exc}", transient=True) from None
        if not getattr(response, "choices", None):
            raise self._error("malformed response: no choices", transient=True)
        choice = response.choices[0]
        text = choice.message.content or ""
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else request.prompt_chars() // 4
        completion_tokens = usage.completion_tokens if usage else len(text) // 4
        return BackendReply(
            text,
            choice.finish_reason,
            prompt_tokens,
            completion_tokens,
            getattr(response, "model", None) or None,
            getattr(response, "system_fingerprint", None) or None,
        )


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return exc.message


class LocalBackend:
    """The embedded model (or any local causal LM) in this process. Requests are gathered
    into batches of similar prompt length and the same generation options, and generated
    greedily (sampled when the temperature is above 0) on one worker thread.

    A request whose messages end with the assistant's turn continues that turn; `stop`
    strings end a reply (and are cut from it); a YES_SCORE constraint makes the reply one
    whole number from 1 to 10, from how likely the model is to answer Yes rather than No."""

    # Greedy replies come from engines/models/decoding.py (each leaves the batch when it ends, a
    # beginning the batch shares is computed once). False: from `generate`, as sampled
    # replies are; benchmarks/local_batch.py times both ways side by side.
    pruned_decoding = True

    def __init__(self, settings: OracleSettings, artifacts: str | Path):
        self.settings = settings
        self.artifacts = artifacts
        # Enough requests in hand to fill batches of similar length.
        self.concurrency = settings.batch_size * 4
        self._model = None
        self._tokenizer = None
        self._queue: list[tuple[OracleRequest, asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> "LocalBackend":
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-oracle")
        self._loop_task = asyncio.create_task(self._batch_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def complete(self, request: OracleRequest) -> BackendReply:
        assert self._wake is not None, "use the backend inside `async with`"
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        self._wake.set()
        return await future

    @staticmethod
    def _options(request: OracleRequest) -> tuple:
        """What must be the same for requests to share a batch."""
        return (request.sampling, request.stop, request.constraint)

    def _next_batch(self) -> list[tuple[OracleRequest, asyncio.Future]]:
        self._queue.sort(key=lambda item: item[0].prompt_chars())
        options = self._options(self._queue[0][0])
        batch = [item for item in self._queue if self._options(item[0]) == options][: self.settings.batch_size]
        taken = {id(item) for item in batch}
        self._queue = [item for item in self._queue if id(item) not in taken]
        return batch

    async def _batch_loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0.005)  # let the requests arriving together join
            while self._queue:
                batch = self._next_batch()
                try:
                    replies = await loop.run_in_executor(
                        self._executor, self._generate, [req for req, _ in batch]
                    )
                except Exception as exc:  # a model error fails this batch, not the loop
                    error = BackendError(f"local model failed: {exc}", transient=False)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), reply in zip(batch, replies, strict=True):
                    if not future.done():
                        future.set_result(reply)

    def _ensure_model(self) -> None:
        if self._model is None:
            from reflection_assets.engines.models.loading import shared_causal_lm
            from reflection_assets.engines.oracle.settings import resolve_dtype

            self._model, self._tokenizer = shared_causal_lm(
                self.settings.model, self.artifacts, dtype=resolve_dtype(self.settings.dtype)
            )

    def _encode(self, requests: list[OracleRequest]):
        tokenizer = self._tokenizer
        texts = [
            tokenizer.apply_chat_template(
                r.chat_messages(),
                tokenize=False,
                add_generation_prompt=not r.continues,
                continue_final_message=r.continues,
            )
            for r in requests
        ]
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def _generate(self, requests: list[OracleRequest]) -> list[BackendReply]:
        self._ensure_model()
        if requests[0].constraint == YES_SCORE:
            return self._yes_scores(requests)
        return self._texts(requests)

    def _texts(self, requests: list[OracleRequest]) -> list[BackendReply]:
        model, tokenizer = self._model, self._tokenizer
        encoded = self._encode(requests)
        first = requests[0]
        stops = list(first.stop)
        if first.sampling.temperature > 0 or not self.pruned_decoding:
            decoded = self._generated(encoded, first)
        else:
            # The tokens `generate` would give, without computing finished rows' padding.
            from reflection_assets.engines.models.decoding import greedy_decode

            def stopped(tokens: list[int]) -> bool:
                text = tokenizer.decode(tokens[-64:], skip_special_tokens=True)
                return any(s in text for s in stops)

            decoded = [
                (d.tokens, d.ended)
                for d in greedy_decode(
                    model, encoded["input_ids"], encoded["attention_mask"], first.sampling.max_tokens,
                    tokenizer.eos_token_id, self.settings.repetition_penalty, self.settings.no_repeat_ngram,
                    stopped if stops else None,
                )
            ]
        replies = []
        for (completion, ended), mask in zip(decoded, encoded["attention_mask"], strict=True):
            text = tokenizer.decode(completion, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                text, ended = text[:cut], True
            replies.append(
                BackendReply(
                    text=text.strip(),
                    finish_reason="stop" if ended else "length",
                    prompt_tokens=int(mask.sum()),
                    completion_tokens=len(completion),
                    served_model=self.settings.model,
                )
            )
        return replies

    def _generated(self, encoded, first: OracleRequest) -> list[tuple[list[int], bool]]:
        """(new tokens, ended) per row from `generate`: sampled at the request's temperature
        above 0, else greedy."""
        import torch

        model, tokenizer = self._model, self._tokenizer
        sampling = first.sampling
        options: dict[str, object] = {"max_new_tokens": sampling.max_tokens, "do_sample": False}
        if sampling.temperature > 0:
            options.update(do_sample=True, temperature=sampling.temperature)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        if self.settings.repetition_penalty != 1.0:
            options["repetition_penalty"] = self.settings.repetition_penalty
        if self.settings.no_repeat_ngram:
            options["no_repeat_ngram_size"] = self.settings.no_repeat_ngram
        if first.stop:
            # Each sequence stops at its own stop string; the batch ends when all have.
            options.update(stop_strings=list(first.stop), tokenizer=tokenizer)
        with torch.inference_mode():
            output = model.generate(
                **encoded, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **options
            )
        prompt_width = encoded["input_ids"].shape[1]
        decoded = []
        for row in output:
            new = row[prompt_width:].tolist()
            ended = tokenizer.eos_token_id in new
            completion = new[: new.index(tokenizer.eos_token_id)] if ended else new
            if not ended:
                completion = [t for t in completion if t != tokenizer.pad_token_id]
            decoded.append((completion, ended))
        return decoded

    def _yes_scores(self, requests: list[OracleRequest]) -> list[BackendReply]:
        """round(1 + 9 p), p = P(Yes) / (P(Yes) + P(No)) for the reply's first token (either
        case). Measured on the embedded model, on 10 good answers against empty, wrong or
        off-topic ones: the good one scored higher 9 times in 10; asking it for a digit from
        1 to 10 instead, it copied the digit in the prompt ("Assistant 1") 20 times in 20."""
        import torch

        tokenizer = self._tokenizer
        words = {w: tokenizer.convert_tokens_to_ids(w) for w in ("Yes", "yes", "No", "no")}
        if any(i is None or i == tokenizer.unk_token_id for i in words.values()):
            raise BackendError("the local model's tokenizer has no Yes/No tokens: it cannot score", transient=False)
        replies = []
        # One prompt per forward pass, no padding: in bfloat16 a padded batch shifts the
        # probabilities a little with whatever shares the batch (seen: a few scores flipped
        # between two runs of the main job), and one pass costs ~0.1 s.
        for request in requests:
            encoded = self._encode([request])
            with torch.inference_mode():
                logits = self._model(**encoded).logits[0, -1, :].float()
            probs = torch.softmax(logits, dim=-1)
            yes = probs[words["Yes"]] + probs[words["yes"]]
            no = probs[words["No"]] + probs[words["no"]]
            score = int(torch.round(1 + 9 * yes / (yes + no)))
            replies.append(BackendReply(str(score), "stop", int(encoded["attention_mask"].sum()), 1, self.settings.model))
        return replies


def make_backend(settings: OracleSettings, artifacts: str | Path) -> Backend:
    if settings.kind.in_process:
        return LocalBackend(settings, artifacts)
    return OpenAIBackend(settings)
