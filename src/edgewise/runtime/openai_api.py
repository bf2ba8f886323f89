"""The OpenAI-compatible HTTP API over one exported model and its adapters (FastAPI; `serve.py` runs it).

`model` in a request picks the adapter ("base" or an adapter's name): each request runs its own onnxruntime-genai
generator with that adapter, so concurrent requests never share adapter state. Errors are OpenAI-style JSON with the
matching HTTP status; the OpenAPI document is at /openapi.json."""
from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from typing import Iterator, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from edgewise.runtime.genai import Runtime, Sampling

BASE = "base"


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class _Options(BaseModel):
    model: str
    max_tokens: int | None = Field(default=None, ge=1, description="tokens to generate (default: up to the context)")
    temperature: float = Field(default=1.0, ge=0, le=2, description="0 is greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = Field(default=None, description="up to 4 sequences that end the answer")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="sampling seed (the runtime's is 32-bit)")
    stream: bool = False
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
    """The loaded model, the served names and the limits every request is checked against."""

    def __init__(self, runtime: Runtime, parallel: int = 4):
        self.runtime = runtime
        self.slots = threading.Semaphore(parallel)

    def models(self) -> list[str]:
        return [BASE, *self.runtime.names]

    def adapter(self, model: str) -> str | None:
        if model not in self.models():
            raise APIError(404, f"The model '{model}' does not exist (served: {', '.join(self.models())})",
                           "model_not_found", "model")
        return None if model == BASE else model

    def sampling(self, body: _Options, prompt_len: int) -> Sampling:
        context = self.runtime.context_length
        room = context - prompt_len
        if room < 1:
            raise APIError(400, f"the prompt has {prompt_len} tokens; this model's context is {context}",
                           "context_length_exceeded", "messages" if isinstance(body, ChatRequest) else "prompt")
        return Sampling(min(body.max_tokens or room, room), body.temperature, body.top_p, seed=body.seed)

    def pieces(self, ids: list[int], adapter: str | None, sampling: Sampling) -> Iterator[str]:
        with self.slots:
            yield from self.runtime.stream(ids, adapter, sampling)


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s in text]
    return (text[:min(hits)], True) if hits else (text, False)


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the start of a stop sequence (not yet safe to stream)."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def generate_text(server: Server, ids, adapter, sampling: Sampling,
                  stops: list[str]) -> Iterator[tuple[str, str | None, int]]:
    """(new text, finish reason or None, tokens so far) as tokens arrive; stop sequences are honoured across token
    boundaries (text that may begin one is held back until it cannot)."""
    text, sent, count = "", 0, 0
    for piece in server.pieces(ids, adapter, sampling):
        count += 1
        text += piece
        cut, stopped = _cut_at_stop(text, stops)
        if stopped:
            yield cut[sent:], "stop", count
            return
        safe = len(text) - _held_back(text, stops)
        if safe > sent:
            yield text[sent:safe], None, count
            sent = safe
    yield text[sent:], "length" if count >= sampling.max_new_tokens else "stop", count


def _prepare(server: Server, body: _Options):
    adapter = server.adapter(body.model)
    stops = body.stops()
    if isinstance(body, ChatRequest):
        ids = server.runtime.prompt_ids([m.model_dump() for m in body.messages])
    else:
        ids = list(server.runtime.tokenizer.encode(body.prompt))
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


async def _respond(server: Server, body: _Options, kind: str):
    ids, adapter, sampling, stops = _prepare(server, body)
    rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    parts = generate_text(server, ids, adapter, sampling, stops)
    if body.stream:
        return StreamingResponse(_sse(parts, kind, rid, body.model), media_type="text/event-stream")
    chunks = await run_in_threadpool(list, parts)
    text, (_, finish, completion) = "".join(c[0] for c in chunks), chunks[-1]
    usage = {"prompt_tokens": len(ids), "completion_tokens": completion, "total_tokens": len(ids) + completion}
    return _full(kind, rid, body.model, text, finish, usage)


async def _sse(parts: Iterator, kind: str, rid: str, model: str):
    if kind == "chat":
        first = _chunk(kind, rid, model, "", None)
        first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        yield f"data: {json.dumps(first)}\n\n"
    done = object()
    try:
        while (item := await run_in_threadpool(next, parts, done)) is not done:
            text, finish, _ = item
            if text or finish:
                yield f"data: {json.dumps(_chunk(kind, rid, model, text, finish))}\n\n"
        yield "data: [DONE]\n\n"
    finally:  # a client that went away frees its generation slot at once
        await run_in_threadpool(parts.close)


def create_app(server: Server, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="edgewise", version="1", description="OpenAI-compatible API over an ONNX Runtime GenAI model")

    def authorize(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if api_key and not secrets.compare_digest(given, f"Bearer {api_key}"):
            raise APIError(401, "invalid or missing API key", "invalid_api_key")

    @app.exception_handler(APIError)
    async def api_error(_request, exc: APIError):
        return _error(exc.status, str(exc), exc.code, exc.param)

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
    async def chat(body: ChatRequest):
        return await _respond(server, body, "chat")

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest):
        return await _respond(server, body, "text")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return app


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)
