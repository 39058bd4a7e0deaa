"""CuPL and VisProg's program writer with the real local language model (SmolLM2-135M-Instruct) and
with OpenAICompatibleLLM against a real `mmfm serve-llm` on loopback. A recording wrapper passes every
call through to the real model and keeps the messages, so the tests can check what was asked."""

from __future__ import annotations

import json

import pytest
import torch

from mmfm.chain.cupl import (
    CUPL_PROMPTS,
    cupl_classifier,
    first_sentence,
    generate_descriptions,
    load_prompts,
    save_prompts,
)
from mmfm.chain.llm import LLM, LocalLLM, OpenAICompatibleLLM
from mmfm.chain.visprog import default_registry, generate_program
from mmfm.errors import InvalidPrompt, InvalidText, ProgramError
from tests.test_cli import run
from tests.test_llm_client import KEY, server  # noqa: F401 - the real server fixture


class Recording(LLM):
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def complete(self, prompt, **kw):
        self.calls.append((prompt, kw))
        return self.inner.complete(prompt, **kw)


@pytest.fixture(scope="module")
def local():
    return LocalLLM(dtype="bfloat16")


def test_first_sentence():
    assert first_sentence(" A snowman is made of snow. It has a carrot nose.") == "A snowman is made of snow."
    assert first_sentence("Sure! A red circle on top") == "A red circle on top."
    assert first_sentence("   ") == "" and first_sentence("x" * 400) == ""


def test_cupl_with_the_local_model(local):
    rec = Recording(local)
    out = generate_descriptions(rec, ["apple", "traffic light"], n=2, max_tokens=24, progress=False)
    assert set(out) == {"apple", "traffic light"}
    for sents in out.values():
        assert sents and all(s.endswith((".", "!", "?")) and len(s) > 3 for s in sents)
    asked = [p for p, _ in rec.calls]
    assert len(asked) == 2 * len(CUPL_PROMPTS)
    assert "How can you identify an apple?" in asked and "What does a traffic light look like?" in asked
    assert all(kw["n"] == 2 and kw["stop"] == ["."] and kw["temperature"] == 0.99 for _, kw in rec.calls)


def test_cupl_cli_against_the_real_server(server, tmp_path):  # noqa: F811
    import os

    (tmp_path / "classes.txt").write_text("snowman\nhouse\n")
    env_key = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = KEY
    try:
        res = run("cupl", "generate", "--classes", str(tmp_path / "classes.txt"), "--out", str(tmp_path / "p.json"),
                  "--n", "1", "--max-tokens", "20", "--llm-url", server, timeout=600)
    finally:
        if env_key is None:
            os.environ.pop("OPENAI_API_KEY")
        else:
            os.environ["OPENAI_API_KEY"] = env_key
    assert res.returncode == 0, res.stderr
    prompts = load_prompts(tmp_path / "p.json")
    assert set(prompts) == {"snowman", "house"} and all(prompts.values())


def test_prompts_files_are_checked(tmp_path):
    save_prompts(tmp_path / "ok.json", {"a": ["one.", "two."]})
    assert load_prompts(tmp_path / "ok.json") == {"a": ["one.", "two."]}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InvalidPrompt, match="not JSON"):
        load_prompts(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text(json.dumps({"a": []}))
    with pytest.raises(InvalidText, match="'a'"):
        load_prompts(tmp_path / "empty.json")


def test_cupl_classifier_pools_every_sentence():
    from mmfm.models.clip import CLIP, CLIPConfig
    from mmfm.text.tokenizer import CLIPTokenizer

    tok = CLIPTokenizer.world(context_length=16)
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(embed_dim=16, vision=dict(image_size=16, patch_size=8, width=16, layers=1, heads=2),
                           text=dict(vocab_size=tok.vocab_size, context_length=16, width=16, layers=1, heads=2,
                                     sot_token_id=tok.sot_token_id, eot_token_id=tok.eot_token_id))).eval()
    prompts = {"red circle": ["a round red shape."], "blue star": ["a blue shape with points.", "a star."]}
    both = cupl_classifier(clip, tok, ["red circle", "blue star"], prompts, templates=("a {}",), mode="both")
    with torch.no_grad():
        e = torch.nn.functional.normalize(clip.encode_text(tok(["a round red shape.", "a red circle"])), dim=-1)
    want = torch.nn.functional.normalize(e.mean(0), dim=0)
    assert torch.allclose(both[:, 0], want, atol=1e-5)
    desc = cupl_classifier(clip, tok, ["red circle", "blue star"], prompts, mode="descriptions")
    assert torch.allclose(desc[:, 0], e[0], atol=1e-5)
    with pytest.raises(InvalidPrompt, match="no descriptions"):
        cupl_classifier(clip, tok, ["red circle", "green square"], prompts, mode="both")


def test_program_writer_with_the_local_model(local):
    """A 135M model often writes invalid programs: the writer must then send the error back and stop
    after the allowed repairs; whatever it returns has been validated."""
    rec = Recording(local)
    reg = default_registry()
    try:
        gen = generate_program(rec, "Hide the face with a smiley", "edit", reg, max_repairs=1, max_tokens=80)
        assert gen.program.result in ("RESULT", "FINAL_RESULT") and gen.attempts[-1][1] is None
    except ProgramError as e:
        assert "in 2 attempts" in str(e)
    assert 1 <= len(rec.calls) <= 2
    first = rec.calls[0][0]
    assert first[0]["role"] == "system" and "Emoji(image, object, emoji)" in first[0]["content"]
    assert first[-1] == {"role": "user", "content": "Hide the face with a smiley"}
    if len(rec.calls) == 2:  # the repair turn carries the validation error
        assert "That program is invalid" in rec.calls[1][0][-1]["content"]


def test_program_writer_over_http(server):  # noqa: F811
    llm = OpenAICompatibleLLM(base_url=server, api_key=KEY)
    try:
        gen = generate_program(llm, "Blur the background behind the person", "edit", default_registry(),
                               max_repairs=0, max_tokens=80)
        assert gen.program.steps
    except ProgramError as e:
        assert "in 1 attempt;" in str(e) and "line" in str(e)
    with pytest.raises(ProgramError, match="empty"):
        generate_program(llm, "  ", "edit", default_registry())
