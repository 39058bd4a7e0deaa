"""The OpenAI chat-completions part of `mmfm serve` (and of `mmfm serve-llm`, the same server with only
the language model):

    GET  /v1/models
    POST /v1/chat/completions   {messages, max_tokens, temperature, top_p, n, stop, seed, stream}
    GET  /openapi.json, /docs   the schema (FastAPI)

A message's content is a string or a list of parts, as OpenAI's vision API sends it: `{"type": "text",
"text": ...}` and `{"type": "image_url", "image_url": {"url": ...}}` (mmfm.serve.images reads the URL).
A conversation with images goes to the vision-language model (a LLaVA), with an image placeholder where
each image part was; text alone goes to the language model.

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
from typing import Annotated, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmfm.errors import MMFMError

MAX_BODY = 1 << 20
MAX_N = 8
MAX_SEED = 2**63 - 1


_TEXT = Annotated[str, Field(pattern=r"\S")]  # an empty or blank message is a prompt the model refuses


# a system prompt alone asks nothing: some message is the user's, the assistant's or a tool's
_SAYS_SOMETHING = {"contains": {"type": "object", "properties": {"role": {"enum": ["user", "assistant", "tool"]}},
                                "required": ["role"]}}


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: _TEXT


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: _TEXT | Annotated[list[TextPart | ImagePart], Field(min_length=1)]


class ChatRequest(BaseModel):
    """The request body as the OpenAPI schema shows it. The route reads the body itself (`parse_chat_request`),
    so that a body too deep, too large or not JSON is a 400 / 413 rather than a framework error."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, json_schema_extra=_SAYS_SOMETHING)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_N)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False


def chat_schema(window: int, images: bool) -> dict:
    """The request schema of this server: `max_tokens` up to the served model's window, and image parts
    only where a vision-language model answers them; so a client (or a fuzzer) that keeps to the schema
    is refused only for what a schema cannot say (a prompt too long for the window, a stream of n > 1)."""
    message = ChatMessage if images else create_model(
        "ChatMessage", __base__=ChatMessage, content=(_TEXT | Annotated[list[TextPart], Field(min_length=1)], ...))
    request = create_model("ChatRequest", __base__=ChatRequest,
                           messages=(list[message], Field(min_length=1, json_schema_extra=_SAYS_SOMETHING)),
                           max_tokens=(int | None, Field(None, ge=1, le=window)))
    return _inlined(request.model_json_schema())


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


def _number(body, key, default, lo, hi, cast=float, open_lo: bool = False):
    """body[key] in [lo, hi] ((lo, hi] with open_lo), or the default when absent or null."""
    v = body.get(key, default)
    if v is None:
        return default
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (lo < v if open_lo else lo <= v) and v <= hi
    if not ok:  # NaN fails too
        raise BadRequest(f"'{key}' must be a number in {'(' if open_lo else '['}{lo}, {hi}], got {v!r:.40}")
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
    if isinstance(seed, float) and seed.is_integer():  # JSON Schema's integer includes 1.0
        seed = int(seed)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise BadRequest(f"'seed' must be an integer in [0, {MAX_SEED}]")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    texts, images = split_images(messages)
    return {
        "messages": texts,
        "images": images,
        "max_new_tokens": _number(body, "max_tokens", 256, 1, max_tokens_limit, int),
        "temperature": _number(body, "temperature", 1.0, 0, 2),
        "top_p": _number(body, "top_p", 1.0, 0, 1, open_lo=True),  # top-p keeps the likeliest token: any p > 0
        "n": _number(body, "n", 1, 1, MAX_N, int),
        "stop": stop,
        "seed": seed,
        "stream": stream,
    }


def split_images(messages: list) -> tuple[list, list[tuple[int, str]]]:
    """Messages whose content is a list of parts -> the same messages with string content (text parts
    joined; each image part becomes the marker IMAGE_PART) and the image URLs in order, with the index of
    their message. String contents and anything malformed pass through for the model to refuse."""
    out, images = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), list):
            out.append(m)
            continue
        pieces = []
        for part in m["content"]:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            elif kind == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str):
                    raise BadRequest(f"messages[{i}]: an image_url part needs image_url.url (a data URL)")
                images.append((i, url))
                pieces.append(IMAGE_PART)
            else:
                raise BadRequest(f"messages[{i}].content: each part is {{type: text, text}} or "
                                 f"{{type: image_url, image_url: {{url}}}}")
        out.append({**m, "content": "".join(pieces)})
    return out, images


IMAGE_PART = "\x00image\x00"  # stands for an image part until the VLM's placeholder replaces it


def _error(status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


class _Cancelled(Exception):
    pass


DRAIN_MAX = 64 << 20  # an over-limit body up to this size is read and dropped before the 413 (lingering close)


async def _drain(receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class _TooLarge(Exception):
    pass


class ModelQueue:
    """One model call at a time on one worker thread (one set of models, two cores), at most `max_queue`
    callers waiting; past that a BadRequest 503 (the route answers it with Retry-After)."""

    def __init__(self, max_queue: int = 16, retry_after_s: int = 5):
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmfm-model")
        self.max_queue, self.retry_after_s = max_queue, retry_after_s
        self.waiting = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self.waiting >= self.max_queue + 1:
                raise BadRequest(f"the server is busy ({self.max_queue} requests waiting); retry in "
                                 f"{self.retry_after_s} s", 503, "server_busy")
            self.waiting += 1

    def leave(self) -> None:
        with self._lock:
            self.waiting -= 1

    async def run(self, fn):
        """fn() on the worker, after waiting for a place; BadRequest 503 when the queue is full."""
        self.enter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.worker, fn)
        finally:
            self.leave()


class _Guard:
    """ASGI middleware (not Starlette's BaseHTTPMiddleware, which buffers streams and hides disconnects):
    the API key, the declared body size, and a 500 answer for any bug of ours before a response began."""

    OPEN = ("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect")  # no secrets there

    def __init__(self, app, api_key: str | None = None, max_body: int = MAX_BODY, public: tuple = ()):
        self.app, self.api_key, self.max_body = app, api_key, max_body
        self.public = self.OPEN + tuple(public)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = None
        if self.api_key and scope["path"] not in self.public and (
            headers.get("authorization", "") != f"Bearer {self.api_key}"
        ):
            refusal = _error(401, "invalid or missing API key (Authorization: Bearer ...)", "authentication_error")
        length = headers.get("content-length")
        if refusal is None and length is not None and (not length.isdigit() or int(length) > self.max_body):
            refusal = _error(413 if length.isdigit() else 400,
                             f"Content-Length {length[:20]!r}: the body must be at most {self.max_body} bytes (limit)")
        if refusal is not None:
            if length is not None and length.isdigit() and int(length) <= DRAIN_MAX:
                await _drain(receive)  # read the rest first: closing on a client still sending is a reset
            return await refusal(scope, receive, send)
        started, received = False, 0

        async def counted():  # a chunked body has no Content-Length: count it as it arrives
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise _TooLarge
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if started:
                raise
            await _error(413, f"request body over the {self.max_body} byte limit")(scope, receive, send)
        except Exception as e:  # noqa: BLE001 - a bug of ours: still an answer, never a reset
            if started:
                raise
            await _error(500, f"internal error: {type(e).__name__}: {e}", "server_error")(scope, receive, send)


def create_app(lm=None, *, vlm=None, api_key: str | None = None, model_name: str | None = None,
               vlm_name: str | None = None, max_queue: int = 16, retry_after_s: int = 5, max_body: int = MAX_BODY,
               image_policy=None, title: str = "mmfm", public_paths: tuple = ()):
    """The FastAPI application: chat completions with `lm` (a LanguageModel) for text and `vlm` (a
    Llava) for conversations with images; either may be None. One model call at a time; up to
    `max_queue` requests wait for it, more get 503 + Retry-After. `app.state.queue` (a ModelQueue) and
    `app.state.read_body` are there for the routes `mmfm.serve.app` adds."""
    from mmfm.serve.images import ImagePolicy

    name = model_name or getattr(lm, "name", "mmfm")
    vname = vlm_name or "llava"
    policy = image_policy or ImagePolicy()
    queue = ModelQueue(max_queue, retry_after_s)
    app = FastAPI(title=title, version="1", description="Local models behind the OpenAI API.")
    app.state.queue = queue
    app.state.generation_pool = queue.worker
    app.state.image_policy = policy
    app.state.models = ([{"id": name, "object": "model", "owned_by": "mmfm", "kind": "chat"}] if lm is not None
                        else []) + ([{"id": vname, "object": "model", "owned_by": "mmfm", "kind": "vision-chat"}]
                                    if vlm is not None else [])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return _error(exc.status_code, message, kind)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return _error(400, f"invalid request: {exc.errors()[:1]}")

    @app.exception_handler(BadRequest)
    async def bad_request(request, exc):
        headers = {"Retry-After": str(retry_after_s)} if exc.status == 503 else None
        return _error(exc.status, str(exc), exc.kind, headers)

    @app.exception_handler(MMFMError)
    async def typed_error(request, exc):  # a bad image, prompt or text: the client's to fix
        return _error(400, str(exc))

    app.add_middleware(_Guard, api_key=api_key, max_body=max_body, public=public_paths)

    async def read_body(request: Request):
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                raise BadRequest(f"request body over the {max_body} byte limit", 413)
        try:
            return json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise BadRequest(f"the request body is not valid JSON ({type(e).__name__})") from None

    app.state.read_body = read_body

    window = lm.config.max_seq_len if lm is not None else vlm.config.lm.max_seq_len if vlm is not None else 4096

    @app.get("/health")
    async def health():
        """llama.cpp's server answers the same route: liveness and how many requests are in the queue."""
        return {"status": "ok", "waiting": queue.waiting, "max_queue": queue.max_queue}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": app.state.models}

    def vision_call(req: dict):
        """The conversation with its images -> a function that answers it on the worker (n answers)."""
        from mmfm.serve.images import read_image

        if vlm is None:
            raise BadRequest("this server has no vision-language model for image_url parts (start it with "
                             "--llava DIR)")
        if len(req["images"]) > 8:
            raise BadRequest("at most 8 images per request")
        pics = [read_image(url, policy) for _, url in req["images"]]  # InvalidImage -> 400, before queueing
        ph = vlm.config.image_token
        msgs = []
        for m in req["messages"]:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise BadRequest("each message is {role, content}")
            if ph in m["content"]:
                raise BadRequest(f"the text may not contain {ph!r}: images are sent as image_url parts")
            if IMAGE_PART in m["content"] and m.get("role") != "user":
                raise BadRequest("images belong in user messages")
            msgs.append({"role": m.get("role"), "content": m["content"].replace(IMAGE_PART, ph + "\n")})
        n = req["n"]

        def answer():
            out = vlm.generate([msgs] * n, [pics] * n, max_new_tokens=req["max_new_tokens"],
                               temperature=req["temperature"], top_p=req["top_p"], seed=req["seed"],
                               stop=req["stop"])
            prompt = len(vlm.conversation().prompt(msgs)[0])
            return out, prompt

        return answer

    @app.post("/v1/chat/completions", openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": chat_schema(window, vlm is not None)}}}})
    async def chat_completions(request: Request):
        req = parse_chat_request(await read_body(request), window)
        if req["images"]:
            answer = vision_call(req)
            try:
                out, prompt_tokens = await queue.run(answer)
            except MMFMError as e:
                return _error(400, str(e))
            if req["stream"]:
                return _one_chunk_stream(out[0], vname)
            return _completion(vname, [(t, "stop", 0) for t in out], prompt_tokens, vlm.tokenizer)
        if lm is None:
            raise BadRequest("this server has no language model for text-only chat (start it with --lm)")
        if req["stream"]:
            queue.enter()
            return await _stream(request, req)
        try:
            res = await queue.run(lambda: lm.complete(
                req["messages"], n=req["n"], max_new_tokens=req["max_new_tokens"], temperature=req["temperature"],
                top_p=req["top_p"], stop=req["stop"], seed=req["seed"]))
        except MMFMError as e:  # a prompt the model refuses (empty, too long, bad roles, not UTF-8)
            return _error(400, str(e))
        return _completion(name, [(r.text, r.finish_reason, len(r.tokens)) for r in res], res[0].prompt_tokens)

    def _completion(model: str, rows, prompt_tokens: int, tokenizer=None) -> dict:
        if tokenizer is not None:  # the VLM path counts its completion tokens here
            rows = [(t, f, len(tokenizer.encode(t)) if t else 0) for t, f, _ in rows]
        completion_tokens = sum(n for _, _, n in rows)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                        for i, (t, f, _) in enumerate(rows)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _chunk(cid: str, created: int, model: str, delta: dict, finish: str | None = None) -> str:
        payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(payload)}\n\n"

    def _one_chunk_stream(text: str, model: str):
        """The VLM answers whole (its generate has no streaming hook): the stream is role, text, stop."""
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        async def events():
            yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
            yield _chunk(cid, created, model, {"content": text})
            yield _chunk(cid, created, model, {}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _stream(request: Request, req: dict):
        """Pieces are made on the worker thread and handed over through a queue; the first one is awaited
        before the 200 is sent, so a refused prompt is still a 400. A client gone mid-stream sets
        `cancel`, and the worker stops at its next piece. The caller has entered the queue."""
        if req["n"] != 1:
            queue.leave()
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
                queue.leave()  # on this thread: the place is freed even if the request's loop is gone

        loop.run_in_executor(queue.worker, produce)
        first = await pieces.get()
        if isinstance(first, Exception):
            cancel.set()
            status = 400 if isinstance(first, MMFMError) else 500
            return _error(status, str(first) if status == 400 else f"internal error: {type(first).__name__}: {first}",
                          "invalid_request_error" if status == 400 else "server_error")
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        async def events():
            try:
                yield _chunk(cid, created, name, {"role": "assistant", "content": ""})
                item = first
                while item is not end:
                    if isinstance(item, Exception):  # the 200 is sent: the failure is told in the stream
                        error = {"message": f"generation failed: {type(item).__name__}: {item}",
                                 "type": "invalid_request_error" if isinstance(item, MMFMError) else "server_error"}
                        yield f"data: {json.dumps({'error': error})}\n\n"
                        break
                    yield _chunk(cid, created, name, {"content": item})
                    item = await pieces.get()
                else:
                    yield _chunk(cid, created, name, {}, "stop")
                yield "data: [DONE]\n\n"
            finally:
                cancel.set()  # the client went away (or we are done): the worker stops, its place is freed

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def serve(lm, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, quiet: bool = False,
          max_queue: int = 16) -> None:
    """`mmfm serve-llm`: the language model alone (mmfm.serve.app.run serves everything)."""
    import uvicorn

    app = create_app(lm, api_key=api_key, max_queue=max_queue)
    print(f"serving {getattr(lm, 'name', 'mmfm')} at http://{host}:{port}/v1 (OpenAI chat completions, "
          f"schema at /openapi.json); Ctrl-C to stop", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", backlog=2048,
                timeout_keep_alive=5, limit_concurrency=max_queue + 64)


__all__ = ["create_app", "serve", "parse_chat_request", "ModelQueue", "BadRequest", "split_images"]
