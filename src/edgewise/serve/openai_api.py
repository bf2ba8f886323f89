"""The OpenAI-compatible HTTP API over one serving engine (engine.py) and the chat page (FastAPI; server.py runs it).

`model` in a request picks the adapter ("base" or an adapter's name). Requests go to one continuous-batching engine
(batching.py): those in flight share each forward pass, every row with its own adapter. Errors are OpenAI-style JSON
with the matching HTTP status (429 with Retry-After when the queue is full); /metrics is in the Prometheus text
format; the OpenAPI document is at /openapi.json."""
from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from pathlib import Path
from typing import AsyncIterator, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from edgewise.runtime.sampling import Sampling
from edgewise.serve.batching import Finished, Job, QueueFull
from edgewise.serve.engine import Engine

BASE = "base"
STATIC = Path(__file__).parent / "static"
# the page loads nothing from elsewhere and runs no inline script
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; style-src 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff"}


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.param, self.headers = status, code, param, headers


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = Field(default=False, description="end the stream with a chunk that carries the usage")


class _Options(BaseModel):
    model: str
    max_tokens: int | None = Field(default=None, ge=1, description="tokens to generate (default: up to the context)")
    temperature: float = Field(default=1.0, ge=0, le=2, description="0 is greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = Field(default=None, description="up to 4 sequences that end the answer")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="sampling seed (the runtime's is 32-bit)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="only 1 is supported")

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(400, "stop takes at most 4 non-empty strings", "invalid_value", "stop")
        return stops


class ChatRequest(_Options):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Options):
    prompt: str


class Server:
    """The HTTP side of one engine (engine.py): the served names, the limits every request is checked against, and
    the engine's refusals as OpenAI errors."""

    def __init__(self, engine: Engine, timeout: float | None = None):
        self.engine, self.timeout = engine, timeout

    def models(self) -> list[str]:
        return [BASE, *self.engine.adapters]

    def adapter(self, model: str) -> str | None:
        if model not in self.models():
            raise APIError(404, f"The model '{model}' does not exist (served: {', '.join(self.models())})",
                           "model_not_found", "model")
        return None if model == BASE else model

    def sampling(self, body: _Options, prompt_len: int) -> Sampling:
        context = self.engine.context_length
        room = context - prompt_len
        if room < 1:
            raise APIError(400, f"the prompt has {prompt_len} tokens; this server's context is {context}",
                           "context_length_exceeded", "messages" if isinstance(body, ChatRequest) else "prompt")
        return Sampling(min(body.max_tokens or room, room), body.temperature, body.top_p, seed=body.seed)

    def submit(self, ids: list[int], adapter: str | None, sampling: Sampling) -> Job:
        """A job whose tokens arrive on an asyncio queue of the running event loop."""
        loop, tokens = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(ids, adapter, sampling, self.timeout, out=_LoopBridge(loop, tokens))
        try:
            return self.engine.batcher.submit(job)
        except QueueFull as exc:
            self.engine.metrics.rejected(adapter or BASE, "rejected")
            raise APIError(429, f"the server is busy: {exc}; retry shortly", "rate_limit_exceeded",
                           headers={"Retry-After": "1"}) from exc

    def close(self) -> None:
        self.engine.close()


class _LoopBridge:
    """put() from the engine thread lands on an asyncio queue in its event loop."""

    def __init__(self, loop, queue: asyncio.Queue):
        self.loop, self.queue = loop, queue

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s in text]
    return (text[:min(hits)], True) if hits else (text, False)


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the start of a stop sequence (not yet safe to stream)."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


async def generate_text(server: Server, job: Job, stops: list[str]) -> AsyncIterator[tuple[str, str | None, int]]:
    """(new text, finish reason or None, tokens so far) as tokens arrive; stop sequences are honoured across token
    boundaries (text that may begin one is held back until it cannot). Leaving early cancels the job: its slot is
    free at the engine's next step."""
    text, sent, count = "", 0, 0
    stream = server.engine.tokenizer.create_stream()
    try:
        while not isinstance(token := await job.out.queue.get(), Finished):
            count += 1
            text += stream.decode(token)
            cut, stopped = _cut_at_stop(text, stops)
            if stopped:
                yield cut[sent:], "stop", count
                return
            safe = len(text) - _held_back(text, stops)
            if safe > sent:
                yield text[sent:safe], None, count
                sent = safe
        if token.reason == "timeout":
            raise APIError(504, f"the request ran past this server's timeout of {server.timeout:g} s", "timeout")
        if token.reason in ("error", "cancelled"):
            raise APIError(500 if token.reason == "error" else 503, token.detail or token.reason, token.reason)
        yield text[sent:], "length" if token.reason == "length" else "stop", count
    finally:
        job.cancel()


def _prepare(server: Server, body: _Options):
    adapter = server.adapter(body.model)
    stops = body.stops()
    if isinstance(body, ChatRequest):
        ids = server.engine.prompt_ids([m.model_dump() for m in body.messages])
    else:
        ids = list(server.engine.tokenizer.encode(body.prompt))
    if not ids:
        raise APIError(400, "the prompt is empty", "invalid_value", "prompt")
    return ids, adapter, server.sampling(body, len(ids)), stops


def _chunk(kind: str, rid: str, model: str, text: str, finish: str | None) -> dict:
    created = int(time.time())
    if kind == "chat":
        delta = {"content": text} if text or finish is None else {}
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


def _full(kind: str, rid: str, model: str, text: str, finish: str, usage: dict) -> dict:
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        obj = "chat.completion"
    else:
        choice, obj = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}, "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice], "usage": usage}


async def _respond(server: Server, body: _Options, kind: str, request: Request):
    ids, adapter, sampling, stops = _prepare(server, body)
    rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    job = server.submit(ids, adapter, sampling)
    parts = generate_text(server, job, stops)
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(_sse(parts, kind, rid, body.model, len(ids) if usage else None),
                                 media_type="text/event-stream")
    chunks = []
    try:
        async for chunk in parts:
            chunks.append(chunk)
            if await request.is_disconnected():  # nobody to answer: free the slot now
                return Response(status_code=499)
    finally:
        await parts.aclose()
    text, (_, finish, completion) = "".join(c[0] for c in chunks), chunks[-1]
    return _full(kind, rid, body.model, text, finish, _usage(len(ids), completion))


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _sse(parts: AsyncIterator, kind: str, rid: str, model: str, prompt_tokens: int | None = None):
    """Server-sent events; given the prompt's length (stream_options.include_usage), a last chunk with no choices
    and the usage, as OpenAI's API sends it."""
    if kind == "chat":
        first = _chunk(kind, rid, model, "", None)
        first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        yield f"data: {json.dumps(first)}\n\n"
    done = 0
    try:
        async for text, finish, done in parts:
            if text or finish:
                yield f"data: {json.dumps(_chunk(kind, rid, model, text, finish))}\n\n"
        if prompt_tokens is not None:
            last = _chunk(kind, rid, model, "", None)
            last["choices"], last["usage"] = [], _usage(prompt_tokens, done)
            yield f"data: {json.dumps(last)}\n\n"
    except APIError as exc:  # the status line is long gone: the error travels as an event, as OpenAI's does
        yield f"data: {json.dumps(_error_body(exc.status, str(exc), exc.code, exc.param))}\n\n"
    finally:  # a client that went away ends up here too: its slot is freed at once
        await parts.aclose()
    yield "data: [DONE]\n\n"


def create_app(server: Server, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="edgewise", version="1", description="OpenAI-compatible API over an ONNX Runtime GenAI model")

    def authorize(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if api_key and not secrets.compare_digest(given, f"Bearer {api_key}"):
            raise APIError(401, "invalid or missing API key", "invalid_api_key")

    @app.exception_handler(APIError)
    async def api_error(_request, exc: APIError):
        return _error(exc.status, str(exc), exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", "invalid_request_error", where)

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "edgewise"}
                                           for m in server.models()]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat(body: ChatRequest, request: Request):
        return await _respond(server, body, "chat", request)

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest, request: Request):
        return await _respond(server, body, "text", request)

    @app.get("/", include_in_schema=False)
    async def chat_page():
        """The chat page (static/): no key needed to load it; it asks for one when the API does."""
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics", dependencies=[Depends(authorize)])
    async def metrics():
        return Response(server.engine.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    return app


def _error_body(status: int, message: str, code: str, param: str | None = None) -> dict:
    kind = {401: "authentication_error", 429: "rate_limit_error"}.get(status, "invalid_request_error")
    if status >= 500:
        kind = "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(status: int, message: str, code: str, param: str | None = None, headers: dict | None = None):
    return JSONResponse(_error_body(status, message, code, param), status_code=status, headers=headers)
