"""`mmfm serve-llm`: a local language model behind the OpenAI HTTP API (the subset chaining uses):

    GET  /v1/models
    POST /v1/chat/completions   {messages, max_tokens, temperature, top_p, n, stop, seed, stream}

Standard library only (http.server). Requests are validated and answered with OpenAI-style error
bodies: 400 for a bad request, 401 for a wrong key, 404, 413 for a body over 1 MB, 500 otherwise.
Generation is serialised with a lock (one model, two cores); the HTTP side is threaded.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mmfm.errors import MMFMError

MAX_BODY = 1 << 20
MAX_N = 8


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.kind = status, kind


def _number(body, key, default, lo, hi, cast=float):
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise BadRequest(f"'{key}' must be a number in [{lo}, {hi}], got {v!r}")
    return cast(v)


def parse_chat_request(body, max_tokens_limit: int) -> dict:
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
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("'seed' must be an integer")
    return {
        "messages": messages,
        "max_new_tokens": _number(body, "max_tokens", 256, 1, max_tokens_limit, int),
        "temperature": _number(body, "temperature", 1.0, 0, 2),
        "top_p": _number(body, "top_p", 1.0, 1e-6, 1),
        "n": _number(body, "n", 1, 1, MAX_N, int),
        "stop": stop,
        "seed": seed,
        "stream": bool(body.get("stream", False)),
    }


class LLMServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, lm, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 model_name: str | None = None, quiet: bool = True):
        self.lm = lm
        self.api_key = api_key
        self.model_name = model_name or getattr(lm, "name", "mmfm")
        self.lock = threading.Lock()
        self.quiet = quiet
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: LLMServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # noqa: A003 - http.server's name
        if not self.server.quiet:
            super().log_message(fmt, *args)

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: BadRequest) -> None:
        self._send(e.status, {"error": {"message": str(e), "type": e.kind, "code": e.status}})

    def _auth(self) -> None:
        key = self.server.api_key
        if key and self.headers.get("Authorization", "") != f"Bearer {key}":
            raise BadRequest("invalid or missing API key (Authorization: Bearer ...)", 401, "authentication_error")

    def _read_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise BadRequest(f"request body of {n} bytes is over the {MAX_BODY} limit", 413)
        try:
            return json.loads(self.rfile.read(n) or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON ({e})") from None

    # ------------------------------------------------------------------ routes
    def do_GET(self):  # noqa: N802 - http.server's name
        try:
            self._auth()
            if self.path.rstrip("/") != "/v1/models":
                raise BadRequest(f"no route GET {self.path}", 404, "not_found")
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model",
                                                         "owned_by": "mmfm"}]})
        except BadRequest as e:
            self._error(e)

    def do_POST(self):  # noqa: N802
        try:
            self._auth()
            if self.path.rstrip("/") != "/v1/chat/completions":
                raise BadRequest(f"no route POST {self.path}", 404, "not_found")
            req = parse_chat_request(self._read_json(), self.server.lm.config.max_seq_len)
            if req["stream"]:
                self._stream(req)
            else:
                self._complete(req)
        except BadRequest as e:
            self._error(e)
        except MMFMError as e:  # a prompt the model refuses (empty, too long, bad roles)
            self._error(BadRequest(str(e)))
        except Exception as e:  # noqa: BLE001 - the server must answer, never die
            self._error(BadRequest(f"internal error: {type(e).__name__}: {e}", 500, "server_error"))

    def _complete(self, req: dict) -> None:
        lm = self.server.lm
        with self.server.lock:
            res = lm.complete(req["messages"], n=req["n"], max_new_tokens=req["max_new_tokens"],
                              temperature=req["temperature"], top_p=req["top_p"], stop=req["stop"], seed=req["seed"])
        prompt_tokens = res[0].prompt_tokens
        completion_tokens = sum(len(r.tokens) for r in res)
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.server.model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": r.text},
                         "finish_reason": r.finish_reason} for i, r in enumerate(res)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    def _stream(self, req: dict) -> None:
        if req["n"] != 1:
            raise BadRequest("streaming supports n = 1")
        lm = self.server.lm
        pieces = lm.stream(req["messages"], max_new_tokens=req["max_new_tokens"], temperature=req["temperature"],
                           top_p=req["top_p"], stop=req["stop"], seed=req["seed"])
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        with self.server.lock:
            first = next(pieces, None)  # errors in the prompt surface here, before any header is sent
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

            def chunk(delta: dict, finish: str | None = None) -> None:
                payload = {"id": cid, "object": "chat.completion.chunk", "created": created,
                           "model": self.server.model_name,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

            chunk({"role": "assistant", "content": ""})
            if first is not None:
                chunk({"content": first})
                for piece in pieces:
                    chunk({"content": piece})
            chunk({}, "stop")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()


def serve(lm, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, quiet: bool = False) -> None:
    server = LLMServer(lm, host, port, api_key=api_key, quiet=quiet)
    print(f"serving {server.model_name} at {server.url} (OpenAI chat completions); Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


__all__ = ["LLMServer", "serve", "parse_chat_request"]
