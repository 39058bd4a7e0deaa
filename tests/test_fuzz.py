"""Property-based fuzzing of every parser that reads user or file input: image bytes, point and box
arguments, Molmo point strings, chat messages, VisProg programs and Eval expressions, config dicts and
tokenizers. The property is the same everywhere: a valid result or one of mmfm's typed errors, never
another exception, in bounded time. Seeds are fixed (derandomize) and examples bounded, so CI runs the
same cases every time; raise MMFM_FUZZ_EXAMPLES to search longer by hand."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmfm.errors import MMFMError

EXAMPLES = int(os.environ.get("MMFM_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def typed_or_ok(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except MMFMError:
        return None


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes_are_an_image_or_invalid_image(data):
    from mmfm.vision.io import load_image

    img = typed_or_ok(load_image, data)
    assert img is None or (img.mode == "RGB" and min(img.size) >= 1)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(PNG) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_a_damaged_png_is_an_image_or_invalid_image(edits):
    from mmfm.vision.io import load_image

    data = bytearray(PNG)
    for at, value in edits:
        data[at] = value
    img = typed_or_ok(load_image, bytes(data))
    assert img is None or img.mode == "RGB"


@FUZZ
@given(st.text(max_size=40))
def test_point_and_box_arguments(text):
    from mmfm.cli.sam import _numbers, parse_point

    p = typed_or_ok(parse_point, text)
    assert p is None or (len(p) == 3 and all(np.isfinite(p[:2])) and p[2] in (0, 1))
    b = typed_or_ok(_numbers, text, 4, "box")
    assert b is None or (len(b) == 4 and all(np.isfinite(b)))


@FUZZ
@given(st.text(max_size=200), st.integers(1, 4000), st.integers(1, 4000))
def test_molmo_point_strings(text, w, h):
    from mmfm.text.pointing import parse_points, parse_points_v2

    pts = typed_or_ok(parse_points, text, w, h)
    assert pts is None or all(0 <= x <= w and 0 <= y <= h for x, y in pts)
    pts2 = typed_or_ok(parse_points_v2, text)
    assert pts2 is None or all(isinstance(i, int) for i, _, _ in pts2)


@FUZZ
@given(st.text(max_size=300))
def test_visprog_programs_parse_or_refuse(text):
    from mmfm.chain.visprog.program import parse

    prog = typed_or_ok(parse, text)
    assert prog is None or len(prog.steps) >= 1


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("0123456789+-*/%()<>=!andortxf. 'TrueFalse{}[]_ab")), max_size=60),
       st.dictionaries(st.sampled_from(["A", "B", "C"]), st.integers(-5, 5) | st.text(max_size=5), max_size=3))
def test_eval_expressions_evaluate_or_refuse(expr, values):
    from mmfm.chain.visprog.safe_eval import safe_eval

    v = typed_or_ok(safe_eval, expr, values)
    assert v is None or isinstance(v, (int, float, str, bool))


@FUZZ
@given(json_values)
def test_chat_messages_are_checked(obj):
    from mmfm.lm.tokenizer import check_messages

    typed_or_ok(check_messages, obj)


@FUZZ
@given(st.dictionaries(st.sampled_from(["embed_dim", "vision", "text", "norm_eps", "tokenizer", "image_mean",
                                        "model_type", "bogus"]), json_values, max_size=5))
def test_clip_configs_load_or_refuse(d):
    from mmfm.models.clip import CLIPConfig

    cfg = typed_or_ok(CLIPConfig.from_dict, d)
    assert cfg is None or CLIPConfig.from_dict(cfg.to_dict()) == cfg


@FUZZ
@given(st.dictionaries(st.sampled_from(["vocab_size", "dim", "layers", "heads", "kv_heads", "head_dim", "hidden",
                                        "style", "act", "norm_eps", "eos_token_id", "extra"]),
                       json_values | st.integers(-3, 4096), max_size=6))
def test_decoder_configs_load_or_refuse(d):
    from mmfm.nn.decoder import DecoderConfig

    cfg = typed_or_ok(DecoderConfig.from_dict, d)
    assert cfg is None or (cfg.heads % cfg.kv_heads == 0 and cfg.parameters() <= cfg.MAX_PARAMETERS)


@pytest.fixture(scope="module")
def tokenizers():
    import mmfm.lm
    from mmfm.text.tokenizer import CLIPTokenizer

    return CLIPTokenizer.world(), mmfm.lm.default().tokenizer


SPECIAL_STRINGS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "user", "system", "\n"]


@FUZZ
@given(st.text(max_size=120)
       | st.lists(st.sampled_from(SPECIAL_STRINGS) | st.text(max_size=6), max_size=12).map("".join))
def test_tokenizers_take_any_text(tokenizers, text):
    clip_tok, lm_tok = tokenizers
    ids = typed_or_ok(clip_tok, text)
    assert ids is None or ids.shape == (1, clip_tok.context_length)
    specials = {lm_tok.token_to_id(s) for s in SPECIAL_STRINGS[:3]}
    plain = typed_or_ok(lm_tok.encode_plain, text)
    assert plain is None or not specials & set(plain)  # a user's text never yields a control token
    chat = typed_or_ok(lm_tok.encode_chat, [{"role": "user", "content": text}])
    clean = lm_tok.encode_chat([{"role": "user", "content": "x"}])
    if chat is not None:  # the template's control tokens only, however the text spells them
        assert all(chat.count(t) == clean.count(t) for t in specials)


@FUZZ
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF), max_size=80))
def test_plain_encoding_is_lossless(tokenizers, text):
    _, lm_tok = tokenizers
    assert lm_tok.decode(lm_tok.encode_plain(text), skip_special_tokens=False) == text


@FUZZ
@given(json_values)
def test_resume_metrics_lines_never_crash(obj):
    """metrics.jsonl lines a killed or foreign run left behind are dropped, not a traceback."""
    import tempfile

    import torch

    from mmfm.train.trainer import TrainConfig, Trainer

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Linear(1, 1)

        def forward(self, batch):
            return (self.model.weight - 1).pow(2).sum(), {}

    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(steps=1, batch_size=1, lr=0.1, warmup=0, progress=False, log_every=1)
        Trainer(Tiny(), cfg, lambda *a: None, d).train()
        with open(os.path.join(d, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(obj) + "\n" + json.dumps(obj)[:5] + "\n")
        tr = Trainer(Tiny(), cfg, lambda *a: None, d)
        tr.load()
        assert tr.step == 1
