"""`mmfm serve-llm`: a local language model behind the OpenAI HTTP API (the subset chaining uses):

    GET  /v1/models
    POST /v1/chat/completions   {messages, max_tokens, temperature, top_p, n, stop, seed, stream}
    GET  /openapi.json, /docs   the schema (FastAPI)

On FastAPI + uvicorn rather than the standard library's http.server, whose listen backlog of 5 reset
connections under 20 clients and which has no request queue to bound: uvicorn listens with a backlog of
2048, and one generation runs at a time (one model, two cores) while at most `max_queue` requests wait;
past that a request is answered at once with 503 and Retry-After. Every client mistake is a 4xx with an
OpenAI-style error body (400 bad request, 401 key, 404 route, 405 method, 413 body over 1 MB, 422 never:
validation errors are 400 as OpenAI answers them); 5xx is only for our own bugs. A client that
disconnects mid-stream stops its generation and frees its place.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmfm.errors import MMFMError

MAX_BODY = 1 << 20
MAX_N = 8
MAX_SEED = 2**63 - 1


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRequest(BaseModel):
    """The request body as the OpenAPI schema shows it. The route reads the body itself (`parse_chat_request`),
    so that a body too deep, too large or not JSON is a 400 / 413 rather than a framework error."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False


def _inlined(schema: dict) -> dict:
    """A pydantic JSON schema with its `$defs` written in place (the OpenAPI document has no `$defs`)."""
    defs = schema.pop("$defs", {})

    def walk(x):
        if isinstance(x, dict):
            if set(x) == {"$ref"} and x["$ref"].startswith("#/$defs/"):
                return walk(defs[x["$ref"].split("/")[-1]])
            return {k: walk(v) for k, v in x.items()}
        return [walk(v) for v in x] if isinstance(x, list) else x

    return walk(schema)


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.kind = status, kind


def _number(body, key, default, lo, hi, cast=float):
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:  # NaN fails too
        raise BadRequest(f"'{key}' must be a number in [{lo}, {hi}], got {v!r:.40}")
    return cast(v)


def parse_chat_request(body, max_tokens_limit: int) -> dict:
    """A chat-completions body -> generation arguments, or BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop)):
        raise BadRequest("'stop' must be a string or a list of at most 4 strings")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise BadRequest(f"'seed' must be an integer in [0, {MAX_SEED}]")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    return {
        "messages": messages,
        "max_new_tokens": _number(body, "max_tokens", 256, 1, max_tokens_limit, int),
        "temperature": _number(body, "temperature", 1.0, 0, 2),
        "top_p": _number(body, "top_p", 1.0, 1e-6, 1),
        "n": _number(body, "n", 1, 1, MAX_N, int),
        "stop": stop,
        "seed": seed,
        "stream": stream,
    }


def _error(status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


class _Cancelled(Exception):
    pass


class _Guard:
    """ASGI middleware (not Starlette's BaseHTTPMiddleware, which buffers streams and hides disconnects):
    the API key, the declared body size, and a 500 answer for any bug of ours before a response began."""

    OPEN = ("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect")  # no secrets there

    def __init__(self, app, api_key: str | None = None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = None
        if self.api_key and scope["path"] not in self.OPEN and (
            headers.get("authorization", "") != f"Bearer {self.api_key}"
        ):
            refusal = _error(401, "invalid or missing API key (Authorization: Bearer ...)", "authentication_error")
        length = headers.get("content-length")
        if refusal is None and length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            refusal = _error(413 if length.isdigit() else 400,
                             f"Content-Length {length[:20]!r}: the body must be at most {MAX_BODY} bytes (limit)")
        if refusal is not None:
            return await refusal(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:  # noqa: BLE001 - a bug of ours: still an answer, never a reset
            if started:
                raise
            await _error(500, f"internal error: {type(e).__name__}: {e}", "server_error")(scope, receive, send)


def create_app(lm, *, api_key: str | None = None, model_name: str | None = None, max_queue: int = 16,
               retry_after_s: int = 5):
    """The FastAPI application serving `lm` (a LanguageModel). One generation at a time; up to `max_queue`
    requests wait for it, more get 503 + Retry-After."""
    name = model_name or getattr(lm, "name", "mmfm")
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmfm-generate")  # one model, one at a time
    state = {"waiting": 0}
    admit = threading.Lock()
    app = FastAPI(title="mmfm", version="1", description="A local model behind the OpenAI API.")
    app.state.generation_pool = worker

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return _error(exc.status_code, message, kind)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return _error(400, f"invalid request: {exc.errors()[:1]}")

    app.add_middleware(_Guard, api_key=api_key)

    async def read_body(request: Request):
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise BadRequest(f"request body over the {MAX_BODY} byte limit", 413)
        try:
            return json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise BadRequest(f"the request body is not valid JSON ({type(e).__name__})") from None

    def enter_queue() -> None:
        with admit:
            if state["waiting"] >= max_queue + 1:
                raise BadRequest(f"the server is busy ({max_queue} requests waiting); retry in {retry_after_s} s",
                                 503, "server_busy")
            state["waiting"] += 1

    def leave_queue() -> None:
        with admit:
            state["waiting"] -= 1

    @app.get("/health")
    async def health():
        """llama.cpp's server answers the same route: liveness and how many requests are in the queue."""
        return {"status": "ok", "waiting": state["waiting"], "max_queue": max_queue}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "mmfm"}]}

    @app.post("/v1/chat/completions", openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": _inlined(ChatRequest.model_json_schema())}}}})
    async def chat_completions(request: Request):
        try:
            req = parse_chat_request(await read_body(request), lm.config.max_seq_len)
            enter_queue()
        except BadRequest as e:
            headers = {"Retry-After": str(retry_after_s)} if e.status == 503 else None
            return _error(e.status, str(e), e.kind, headers)
        if req["stream"]:
            return await _stream(request, req)
        loop = asyncio.get_running_loop()
        try:
            res = await loop.run_in_executor(worker, lambda: lm.complete(
                req["messages"], n=req["n"], max_new_tokens=req["max_new_tokens"], temperature=req["temperature"],
                top_p=req["top_p"], stop=req["stop"], seed=req["seed"]))
        except MMFMError as e:  # a prompt the model refuses (empty, too long, bad roles, not UTF-8)
            return _error(400, str(e))
        finally:
            leave_queue()
        prompt_tokens = res[0].prompt_tokens
        completion_tokens = sum(len(r.tokens) for r in res)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": r.text},
                         "finish_reason": r.finish_reason} for i, r in enumerate(res)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    async def _stream(request: Request, req: dict):
        """Pieces are made on the worker thread and handed over through a queue; the first one is awaited
        before the 200 is sent, so a refused prompt is still a 400. A client gone mid-stream sets
        `cancel`, and the worker stops at its next piece."""
        if req["n"] != 1:
            leave_queue()
            return _error(400, "streaming supports n = 1")
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        end = object()

        def handoff(item) -> None:
            try:
                loop.call_soon_threadsafe(pieces.put_nowait, item)
            except RuntimeError:  # the request's event loop is closed: nobody is reading any more
                cancel.set()

        def produce() -> None:
            try:
                for piece in lm.stream(req["messages"], max_new_tokens=req["max_new_tokens"],
                                       temperature=req["temperature"], top_p=req["top_p"], stop=req["stop"],
                                       seed=req["seed"]):
                    if cancel.is_set():
                        raise _Cancelled
                    handoff(piece)
                handoff(end)
            except _Cancelled:
                pass
            except Exception as e:  # noqa: BLE001 - handed to the response
                handoff(e)
            finally:
                leave_queue()  # on this thread: the place is freed even if the request's loop is gone

        loop.run_in_executor(worker, produce)
        first = await pieces.get()
        if isinstance(first, Exception):
            cancel.set()
            status = 400 if isinstance(first, MMFMError) else 500
            return _error(status, str(first) if status == 400 else f"internal error: {type(first).__name__}: {first}",
                          "invalid_request_error" if status == 400 else "server_error")
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(delta: dict, finish: str | None = None) -> str:
            payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(payload)}\n\n"

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                item = first
                while item is not end:
                    if isinstance(item, Exception):
                        break
                    yield chunk({"content": item})
                    item = await pieces.get()
                yield chunk({}, "stop")
                yield "data: [DONE]\n\n"
            finally:
                cancel.set()  # the client went away (or we are done): the worker stops, its place is freed

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def serve(lm, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, quiet: bool = False,
          max_queue: int = 16) -> None:
    import uvicorn

    app = create_app(lm, api_key=api_key, max_queue=max_queue)
    name = app.title
    print(f"serving {getattr(lm, 'name', name)} at http://{host}:{port}/v1 (OpenAI chat completions, "
          f"schema at /openapi.json); Ctrl-C to stop", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", backlog=2048,
                timeout_keep_alive=5, limit_concurrency=max_queue + 64)


__all__ = ["create_app", "serve", "parse_chat_request"]
