"""LLM clients for the chaining methods (CuPL, VisProg): one small interface,

    llm.complete(prompt or messages, n=1, temperature=0.0, max_tokens=256, top_p=1.0, stop=None, seed=None)
        -> str (n == 1) or list[str]

`LocalLLM` runs mmfm's own DecoderLM (SmolLM2-135M-Instruct by default); `OpenAICompatibleLLM`
speaks HTTP `/v1/chat/completions` to any OpenAI-compatible server, `mmfm serve-llm` included.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator

from mmfm.errors import ConfigError, InvalidPrompt, LLMError, LLMTimeout
from mmfm.lm import LanguageModel, default, load_lm

Messages = list[dict]


def as_messages(prompt: str | Messages, system: str | None = None) -> Messages:
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        msgs = list(prompt)
    else:
        raise InvalidPrompt(f"a prompt is a string or a list of messages, got {type(prompt).__name__}")
    if system is not None and (not msgs or msgs[0].get("role") != "system"):
        msgs = [{"role": "system", "content": system}] + msgs
    return msgs


class LLM(ABC):
    """What a chaining method needs from a language model."""

    @abstractmethod
    def complete(self, prompt: str | Messages, *, n: int = 1, temperature: float = 0.0, max_tokens: int = 256,
                 top_p: float = 1.0, stop: str | list[str] | None = None, seed: int | None = None,
                 system: str | None = None) -> str | list[str]:
        ...

    def stream(self, prompt: str | Messages, **kwargs) -> Iterator[str]:
        """Pieces of the answer as they come (default: all at once)."""
        yield self.complete(prompt, **kwargs)

    def complete_batch(self, prompts: list, **kwargs) -> list[str]:
        """One answer per prompt (default: one request each; a local model batches them)."""
        return [self.complete(p, **kwargs) for p in prompts]

    @property
    def purpose(self) -> dict:
        """What the model was fine-tuned for, e.g. {"visprog": {"prompt": "bare"}}: callers that know
        that purpose ask it as it was trained. Unknown (a remote server): {}."""
        return {}


class LocalLLM(LLM):
    """mmfm's own language model in this process."""

    def __init__(self, model=None, dtype: str = "float32"):
        if model is None:
            model = default(dtype)
        elif not isinstance(model, LanguageModel):
            model = load_lm(model, dtype=dtype)
        self.lm = model

    @property
    def purpose(self) -> dict:
        return dict(getattr(self.lm, "purpose", {}) or {})

    def complete(self, prompt, *, n=1, temperature=0.0, max_tokens=256, top_p=1.0, stop=None, seed=None, system=None):
        res = self.lm.complete(as_messages(prompt, system), n=n, max_new_tokens=max_tokens, temperature=temperature,
                               top_p=top_p, stop=stop, seed=seed)
        texts = [r.text for r in res]
        return texts[0] if n == 1 else texts

    def complete_batch(self, prompts, *, temperature=0.0, max_tokens=256, top_p=1.0, stop=None, seed=None,
                       system=None):
        """The prompts as one batch (left padding): greedy answers equal complete()'s one by one."""
        res = self.lm.complete([as_messages(p, system) for p in prompts], max_new_tokens=max_tokens,
                               temperature=temperature, top_p=top_p, stop=stop, seed=seed)
        return [r.text for r in res]

    def stream(self, prompt, *, temperature=0.0, max_tokens=256, top_p=1.0, stop=None, seed=None, system=None, n=1):
        if n != 1:
            raise ConfigError("streaming returns one answer (n=1)")
        yield from self.lm.stream(as_messages(prompt, system), max_new_tokens=max_tokens, temperature=temperature,
                                  top_p=top_p, stop=stop, seed=seed)


class OpenAICompatibleLLM(LLM):
    """A client of `POST {base_url}/chat/completions`. base_url and api_key come from the arguments or
    from OPENAI_BASE_URL / OPENAI_API_KEY. Connection failures, timeouts, 429 and 5xx answers are
    retried with exponential backoff; other 4xx answers raise LLMError at once with the server's
    message; a timeout after the last retry raises LLMTimeout."""

    def __init__(self, model: str = "default", base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 3, backoff: float = 0.5):
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url {self.base_url!r} must start with http:// or https://")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff

    def _body(self, prompt, n, temperature, max_tokens, top_p, stop, seed, system, stream=False) -> dict:
        body = {"model": self.model, "messages": as_messages(prompt, system), "n": n, "temperature": temperature,
                "max_tokens": max_tokens, "top_p": top_p}
        if stop:
            body["stop"] = stop
        if seed is not None:
            body["seed"] = seed
        if stream:
            body["stream"] = True
        return body

    def _open(self, path: str, body: dict):
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}{path}"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (1 + 0.1 * random.random()))
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                return urllib.request.urlopen(req, timeout=self.timeout)
            except urllib.error.HTTPError as e:
                msg = _error_message(e)
                if e.code == 429 or e.code >= 500:
                    last = LLMError(f"{url}: HTTP {e.code}: {msg}")
                    continue
                raise LLMError(f"{url}: HTTP {e.code}: {msg}") from None
            except (TimeoutError, socket.timeout) as e:
                last = LLMTimeout(f"{url}: no answer within {self.timeout:g} s ({e})")
            except urllib.error.URLError as e:
                if isinstance(e.reason, (TimeoutError, socket.timeout)):
                    last = LLMTimeout(f"{url}: no answer within {self.timeout:g} s")
                else:
                    last = LLMError(f"{url}: cannot connect ({e.reason})")
            except (ConnectionError, OSError) as e:
                last = LLMError(f"{url}: connection failed ({e})")
        assert last is not None
        raise type(last)(f"{last} (after {self.max_retries + 1} attempts)")

    def complete(self, prompt, *, n=1, temperature=0.0, max_tokens=256, top_p=1.0, stop=None, seed=None, system=None):
        with self._open(
            "/chat/completions", self._body(prompt, n, temperature, max_tokens, top_p, stop, seed, system)
        ) as r:
            try:
                payload = json.loads(r.read())
                texts = [c["message"]["content"] for c in sorted(payload["choices"], key=lambda c: c.get("index", 0))]
            except (TimeoutError, socket.timeout) as e:
                raise LLMTimeout(f"{self.base_url}: the answer stopped arriving ({e})") from None
            except (ValueError, KeyError, TypeError) as e:
                raise LLMError(f"{self.base_url}: not an OpenAI chat completion ({type(e).__name__}: {e})") from None
        if len(texts) != n:
            raise LLMError(f"{self.base_url}: asked for {n} choices, got {len(texts)}")
        return texts[0] if n == 1 else texts

    def stream(self, prompt, *, temperature=0.0, max_tokens=256, top_p=1.0, stop=None, seed=None, system=None, n=1):
        if n != 1:
            raise ConfigError("streaming returns one answer (n=1)")
        body = self._body(prompt, 1, temperature, max_tokens, top_p, stop, seed, system, stream=True)
        with self._open("/chat/completions", body) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    piece = json.loads(data)["choices"][0]["delta"].get("content")
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    raise LLMError(f"{self.base_url}: bad stream chunk ({e}): {data[:200]}") from None
                if piece:
                    yield piece


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read().decode(errors="replace")
    except Exception:  # noqa: BLE001
        return e.reason or ""
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body[:500] or str(e.reason)


__all__ = ["LLM", "LocalLLM", "OpenAICompatibleLLM", "as_messages"]
