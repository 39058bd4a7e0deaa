"""The server's OpenAPI schema, fuzzed with schemathesis: requests generated from the schema (and, in
negative mode, requests that break it) against the ASGI app in this process, on a tiny random LM so that
each generation is quick. Every answer must be a 2xx or 4xx with a JSON body: never a 5xx."""

from __future__ import annotations

import pytest
import schemathesis  # in the test extra: a missing install fails here, it is never skipped
from hypothesis import HealthCheck, given, settings

import mmfm
from tests.lm_helpers import save_hf_folder, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from mmfm.serve.openai_api import create_app

    tok, _, _ = tiny_tokenizer()
    folder = save_hf_folder(tiny_llama(tok.get_vocab_size()), tmp_path_factory.mktemp("lm") / "hf", tok)
    lm = mmfm.load(folder)
    return create_app(lm, api_key="k", max_queue=4)


def statuses(app, route: str, mode: str, examples: int) -> list[int]:
    """The status of every request schemathesis makes for `route` in `mode`; each must be < 500 with a
    JSON body (an answer, or an OpenAI-style error)."""
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
        assert "error" in response.json() or response.status_code == 200

    check()
    return seen


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_the_schema_allows_or_forbids_is_a_server_error(app, mode):
    seen = statuses(app, "/v1/chat/completions", mode, 25)
    assert len(seen) >= 10
    if mode == "positive":
        assert 200 in seen  # valid requests do get answers
    else:
        assert any(400 <= s < 500 for s in seen)


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
