"""The server's OpenAPI schema, fuzzed with schemathesis: requests generated from the schema (and, in
negative mode, requests that break it) against the ASGI app in this process, on a tiny random LM so that
each generation is quick. Every answer must be a 2xx or 4xx with a JSON body: never a 5xx."""

from __future__ import annotations

import json

import pytest
import schemathesis  # in the test extra: a missing install fails here, it is never skipped
from hypothesis import HealthCheck, given, settings

import mmfm
from tests.lm_helpers import save_hf_folder, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    tok, _, _ = tiny_tokenizer()
    return mmfm.load(save_hf_folder(tiny_llama(tok.get_vocab_size()), tmp_path_factory.mktemp("lm") / "hf", tok))


def app_of(lm):
    from mmfm.serve.openai_api import create_app

    return create_app(lm, api_key="k", max_queue=4)


@pytest.fixture(scope="module")
def app(lm):
    return app_of(lm)


def statuses(app, route: str, mode: str, examples: int) -> list[int]:
    """The status of every request schemathesis makes for `route` in `mode`; each must be < 500 with a
    JSON body (an answer, or an OpenAI-style error) or, streamed, events that are all answer chunks."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    strategy = schema[route]["POST"].as_strategy(schemathesis.GenerationMode(mode))
    seen = []

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case):
        response = case.call(headers={"Authorization": "Bearer k"})
        seen.append(response.status_code)
        assert response.status_code < 500, (case.body, response.text[:300])
        if "text/event-stream" in str(response.headers.get("content-type")):  # (schemathesis cuts long streams)
            events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e.strip()]
            for e in events:
                assert e == "[DONE]" or "choices" in json.loads(e), e[:300]
        else:
            assert "error" in response.json() or response.status_code == 200

    check()
    return seen


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_the_schema_allows_or_forbids_is_a_server_error(app, mode):
    seen = statuses(app, "/v1/chat/completions", mode, 25)
    assert len(seen) >= 10
    if mode == "positive":  # the schema states the server's limits, so most valid requests get answers
        assert seen.count(200) >= len(seen) // 4, seen
    else:
        assert any(400 <= s < 500 for s in seen)


def chat(app, **body):
    from starlette.testclient import TestClient

    with TestClient(app) as client:
        return client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"})


def test_the_schema_states_the_served_models_limits(app, lm):
    from starlette.testclient import TestClient

    with TestClient(app) as client:
        schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["max_tokens"]["anyOf"][0]["maximum"] == lm.config.max_seq_len
    assert "image_url" not in json.dumps(body)  # no VLM: image parts are not part of this server's schema
    window = chat(app, messages=[{"role": "user", "content": "hi"}], max_tokens=lm.config.max_seq_len + 1)
    assert window.status_code == 400 and "max_tokens" in window.json()["error"]["message"]


def test_a_tiny_temperature_samples_the_likeliest_tokens(app):
    """logits / 1e-40 overflow to inf (NaN after softmax): the sampler must shift them first."""
    body = dict(messages=[{"role": "user", "content": "hello there"}], max_tokens=6, seed=1)
    greedy = chat(app, temperature=0, **body)
    tiny = chat(app, temperature=1e-40, **body)
    subnormal = chat(app, temperature=5e-324, **body)  # 0.0 as an fp32 divisor
    for r in (greedy, tiny, subnormal):
        assert r.status_code == 200, r.text[:300]
    answers = [r.json()["choices"][0]["message"]["content"] for r in (greedy, tiny, subnormal)]
    assert answers[1] == answers[2] == answers[0]


class FailsMidStream:
    """The LM, except that its stream raises after two pieces (as a bug or an out-of-memory would)."""

    def __init__(self, lm):
        self.lm, self.config, self.name = lm, lm.config, "failing"

    def stream(self, *args, **kwargs):
        for i, piece in enumerate(self.lm.stream(*args, **kwargs)):
            if i == 2:
                raise RuntimeError("out of memory")
            yield piece


def test_an_error_after_the_stream_began_is_an_error_event_not_a_stop(lm):
    r = chat(app_of(FailsMidStream(lm)), messages=[{"role": "user", "content": "hello"}], max_tokens=12,
             temperature=0, stream=True)
    assert r.status_code == 200  # sent before the failure
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and "out of memory" in error["message"]
    assert all('"finish_reason": "stop"' not in e for e in events)  # a cut answer is not a complete one


@pytest.fixture(scope="module")
def full_app(tmp_path_factory):
    """`mmfm serve`'s app with the shipped CLIP and SAM and an index of 8 world images (no LM, no LLaVA:
    their routes answer 400, which is part of what is checked)."""
    from mmfm.index.build import update_index
    from mmfm.serve.app import create_server
    from mmfm.weights import path
    from tests.test_search import world_folder

    root = tmp_path_factory.mktemp("full")
    world_folder(root / "photos", 8)
    clip = mmfm.load(path("clip-world-tiny"))
    update_index(root / "photos", root / "i.mmfm", clip, "clip-world-tiny", progress=False)
    return create_server(clip=clip, sam=mmfm.load(path("sam-world-tiny")), index=root / "i.mmfm", api_key="k")


@pytest.mark.parametrize("route", ["/v1/embeddings", "/v1/search", "/v1/classify", "/v1/segment/image", "/v1/segment",
                                   "/v1/ask", "/v1/point"])
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_to_the_full_server_is_a_server_error(full_app, route, mode):
    seen = statuses(full_app, route, mode, 12)
    assert len(seen) >= 5
    if mode == "negative":
        assert any(400 <= s < 500 for s in seen)
