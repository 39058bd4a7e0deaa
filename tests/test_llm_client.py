"""LLM clients: OpenAICompatibleLLM against a real `mmfm serve-llm` on loopback (started here, stopped
after), and against small real HTTP/TCP servers that fail on purpose (5xx, silence, closed port)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmfm.chain.llm import LocalLLM, OpenAICompatibleLLM
from mmfm.errors import LLMError, LLMTimeout

KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    env = dict(os.environ, MMFM_API_KEY=KEY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmfm.cli.main", "serve-llm", "--port", str(port), "--dtype", "float32"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve-llm exited: {proc.stdout.read()}")
        try:
            req = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"})
            with urllib.request.urlopen(req, timeout=2) as r:
                assert json.loads(r.read())["data"][0]["id"] == "SmolLM2-135M-Instruct"
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("serve-llm did not come up in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def local():
    return LocalLLM(dtype="float32")


def test_server_gives_the_same_greedy_text_as_local(server, local):
    client = OpenAICompatibleLLM(base_url=server, api_key=KEY, timeout=120)
    for prompt in ["What is the capital of France?", [{"role": "system", "content": "Answer in one word."},
                                                      {"role": "user", "content": "What color is the sky?"}]]:
        ours = local.complete(prompt, max_tokens=24)
        assert ours and client.complete(prompt, max_tokens=24) == ours
    assert "Paris" in client.complete("What is the capital of France?", max_tokens=24)
    # stop strings, n samples and streaming go over the wire too
    assert client.complete("Tell me about Paris.", max_tokens=40, stop=[", "]) == local.complete(
        "Tell me about Paris.", max_tokens=40, stop=[", "])
    samples = client.complete("Write one word.", n=3, temperature=1.0, seed=7, max_tokens=8)
    assert isinstance(samples, list) and len(samples) == 3
    assert "".join(client.stream("Tell me about Paris.", max_tokens=30)) == local.complete(
        "Tell me about Paris.", max_tokens=30
    )


def test_environment_supplies_url_and_key(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert OpenAICompatibleLLM(timeout=120).complete("Say yes.", max_tokens=4)


def test_server_errors_are_typed(server):
    good = OpenAICompatibleLLM(base_url=server, api_key=KEY, timeout=60, max_retries=0)
    with pytest.raises(LLMError, match="401"):
        OpenAICompatibleLLM(base_url=server, api_key="wrong", max_retries=0).complete("hi")
    with pytest.raises(LLMError, match="400.*role"):
        good.complete([{"role": "wizard", "content": "hi"}])
    with pytest.raises(LLMError, match="400.*empty"):
        good.complete("")
    with pytest.raises(LLMError, match="400.*max_tokens"):
        good.complete("hi", max_tokens=10**6)
    with pytest.raises(LLMError, match="404"):
        OpenAICompatibleLLM(base_url=server.replace("/v1", "/v2"), api_key=KEY, max_retries=0).complete("hi")
    # malformed JSON straight at the server
    req = urllib.request.Request(f"{server}/chat/completions", data=b"{not json", method="POST",
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400 and "JSON" in json.loads(e.value.read())["error"]["message"]


class _Flaky(BaseHTTPRequestHandler):
    """503 for the first `fail` requests, then a valid chat completion."""

    def log_message(self, *a):
        pass

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.hits += 1
        if self.server.hits <= self.server.fail:
            body, code = b'{"error": {"message": "overloaded, try later"}}', 503
        else:
            body, code = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                  "finish_reason": "stop"}]}).encode(), 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def flaky():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    srv.hits, srv.fail = 0, 2
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_retries_with_backoff_then_succeeds(flaky):
    url = f"http://127.0.0.1:{flaky.server_address[1]}/v1"
    t = time.time()
    assert OpenAICompatibleLLM(base_url=url, max_retries=3, backoff=0.05).complete("hi") == "ok"
    assert flaky.hits == 3 and time.time() - t >= 0.05 + 0.1  # two waits: 0.05 s, then 0.1 s


def test_gives_up_after_retries_with_the_server_message(flaky):
    flaky.fail = 100
    url = f"http://127.0.0.1:{flaky.server_address[1]}/v1"
    with pytest.raises(LLMError, match="503.*overloaded.*3 attempts"):
        OpenAICompatibleLLM(base_url=url, max_retries=2, backoff=0.01).complete("hi")
    assert flaky.hits == 3


def test_silent_server_times_out():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)  # accepts connections (the kernel does), never answers
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        t = time.time()
        with pytest.raises(LLMTimeout, match="no answer within 0.3 s"):
            OpenAICompatibleLLM(base_url=url, timeout=0.3, max_retries=1, backoff=0.01).complete("hi")
        assert time.time() - t < 5
    finally:
        sock.close()


def test_closed_port_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LLMError, match="cannot connect|connection"):
        OpenAICompatibleLLM(base_url=url, max_retries=1, backoff=0.01).complete("hi")
