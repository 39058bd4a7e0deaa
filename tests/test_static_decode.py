"""Decoding steps on fixed-size caches (mmfm.nn.static_decode): the same numbers as the model's own
decoding eagerly, the same greedy tokens when AOTInductor compiles the step, and the model's own path for
everything the static step does not take (prompts, other batch sizes, extra inputs)."""

from __future__ import annotations

import warnings

import pytest
import torch

from mmfm.errors import ConfigError
from mmfm.nn.decoder import DecoderConfig, DecoderLM
from mmfm.nn.generate import GenerationConfig, _prefill, _step, generate
from mmfm.nn.packed import PackedLinears
from mmfm.nn.static_decode import SlotCache, StaticDecoder


def _model(qk_norm="none", kv_heads=2) -> DecoderLM:
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=300, dim=64, layers=2, heads=4, kv_heads=kv_heads, hidden=128, max_seq_len=300,
                        qk_norm=qk_norm)
    return DecoderLM(cfg).eval()


def _prompts(b=3, t=9):
    ids = torch.randint(0, 300, (b, t), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if b > 1:
        mask[1, :3] = 0  # left padding, as batched prompts are
    if b > 2:
        mask[2, :1] = 0
    return ids, mask


@pytest.mark.parametrize("qk_norm,kv_heads", [("none", 2), ("head", 4)])
def test_eager_static_steps_equal_the_models_steps(qk_norm, kv_heads):
    m = _model(qk_norm, kv_heads)
    fast = StaticDecoder(m, batches=(3,))
    ids, mask = _prompts()
    with torch.inference_mode():
        l1, c1, fm1, p1 = _prefill(m, ids, None, mask, 20, {})
        l2, c2, fm2, p2 = _prefill(fast, ids, None, mask, 20, {})
        assert isinstance(c2[0], SlotCache) and c2[0].k.shape[2] == 256  # rounded up to the first bucket
        assert torch.equal(l1, l2)
        for _ in range(6):  # several steps: each writes its slot, the mask opens one more
            nxt = l1.argmax(-1)
            l1, l2 = _step(m, nxt, c1, fm1, p1, {}), _step(fast, nxt, c2, fm2, p2, {})
            p1 = p2 = p1 + 1
            assert (l1 - l2).abs().max().item() < 1e-5
    cfg = GenerationConfig(max_new_tokens=12)
    assert generate(fast, ids, mask, config=cfg).tokens == generate(m, ids, mask, config=cfg).tokens


def test_other_batches_extra_inputs_and_beams_go_the_models_way():
    m = _model()
    fast = StaticDecoder(m)  # batch 1 only
    ids, mask = _prompts(2)
    with torch.inference_mode():
        caches = fast.new_caches(2, 20)
    assert not isinstance(caches[0], SlotCache)  # batch 2: the model's own caches
    cfg = GenerationConfig(max_new_tokens=8)
    assert generate(fast, ids, mask, config=cfg).tokens == generate(m, ids, mask, config=cfg).tokens
    one = ids[:1]
    emb = m.embed(one).detach()
    assert generate(fast, inputs_embeds=emb, config=cfg).tokens == generate(m, inputs_embeds=emb, config=cfg).tokens
    beams = GenerationConfig(max_new_tokens=6, num_beams=3)  # batch 3 rows of one prompt: the model's caches
    assert generate(StaticDecoder(m, batches=(3,)), one, config=beams).tokens == generate(m, one, config=beams).tokens
    assert PackedLinears.maybe(fast, 1, 8, None) is not None or not fast.compiles  # eager: packing allowed


def test_static_limits_are_clear_errors():
    m = _model()
    fast = StaticDecoder(m)
    assert fast.buckets == (256, 300)  # the window is the last bucket
    assert fast.bucket(257) == 300
    with pytest.raises(ConfigError, match="context window"):
        fast.new_caches(1, 301)
    with pytest.raises(ConfigError, match="backend"):
        StaticDecoder(m, "tensorrt")
    ids = torch.randint(0, 300, (1, 250))
    with pytest.raises(RuntimeError, match="cache full"):
        with torch.inference_mode():
            _, caches, fm, pos = _prefill(fast, ids, None, None, 256, {})
            for c in caches:
                c.pos = 256
            _step(fast, torch.tensor([1]), caches, fm, pos, {})


def test_aot_compiled_steps_give_the_eager_tokens():
    """AOTInductor for real (a C++ compile of a tiny model, seconds): fp32 greedy tokens as the model's,
    one graph per (batch, bucket), compiled once and reused."""
    m = _model()
    fast = StaticDecoder(m, "aot", batches=(1, 3))
    assert fast.compiles and PackedLinears.maybe(fast, 1, 8, None) is None
    ids, mask = _prompts()
    cfg = GenerationConfig(max_new_tokens=10)
    assert generate(fast, ids, mask, config=cfg).tokens == generate(m, ids, mask, config=cfg).tokens
    assert generate(fast, ids[:1], config=cfg).tokens == generate(m, ids[:1], config=cfg).tokens
    assert set(fast.runners) == {(3, 256), (1, 256)}
    runner = fast.runners[1, 256]
    generate(fast, ids[2:], config=cfg)
    assert fast.runners[1, 256] is runner and fast.compile_seconds[1, 256] > 0
    # the library reads the model's weights where they are (no second copy): an in-place change shows
    shared = {t.data_ptr() for t in runner.constants.values()}
    assert all(w.data_ptr() in shared for w in m.parameters())
    before = generate(m, ids[:1], config=cfg).tokens
    with torch.no_grad():
        for w in m.parameters():
            w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(w.numel())))
    after = generate(m, ids[:1], config=cfg).tokens
    assert after != before and generate(fast, ids[:1], config=cfg).tokens == after


def test_the_compiler_stays_out_of_the_decoding_process():
    """The export and compile run in a forked child: a fresh process that compiles and decodes never imports
    dynamo, inductor or sympy itself (several hundred MB it would hold for good), and decodes as the model."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_static_decode import _model, _prompts\n"
        "from mmfm.nn.static_decode import StaticDecoder\n"
        "from mmfm.nn.generate import GenerationConfig, generate\n"
        "m = _model(); fast = StaticDecoder(m, 'aot')\n"
        "ids, cfg = _prompts(1)[0], GenerationConfig(max_new_tokens=6)\n"
        "same = generate(fast, ids, config=cfg).tokens == generate(m, ids, config=cfg).tokens\n"
        "heavy = [k for k in ('torch._dynamo', 'torch._inductor', 'sympy') if k in sys.modules]\n"
        "print(same, sorted(fast.runners), heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[-2] == "True [(1, 256)] []", out.stdout + out.stderr[-2000:]


def test_the_compiling_child_reports_its_error_and_is_killed_past_its_time(tmp_path):
    import time

    from mmfm.nn.static_decode import _in_child

    _in_child(lambda: None, str(tmp_path / "a"))
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        _in_child(lambda: 1 / 0, str(tmp_path / "b"))
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="did not finish"):
        _in_child(lambda: time.sleep(60), str(tmp_path / "c"), timeout=0.5)
    assert time.monotonic() - t < 10


def test_a_compiler_failure_warns_once_and_decodes_the_models_way(monkeypatch):
    """No working C++ compiler (a real failure of AOTInductor's toolchain, not a mock): one warning, then
    the model's own decoding on the same caches, with its tokens."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    m = _model()
    fast = StaticDecoder(m, "aot")
    ids = _prompts(1)[0]
    cfg = GenerationConfig(max_new_tokens=6)
    with pytest.warns(RuntimeWarning, match="could not compile"):
        tokens = generate(fast, ids, config=cfg).tokens
    assert fast.failed and tokens == generate(m, ids, config=cfg).tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second try, no second warning
        assert generate(fast, ids, config=cfg).tokens == tokens and not fast.runners
