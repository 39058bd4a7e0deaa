"""torch.compile as an opt-in (mmfm.compiled): the compiled training step gives the eager run's losses and
checkpoint; a graph inductor cannot lower (mmfm's own oneDNN/MKL-packed decode Linears) falls back to eager
with one warning instead of failing the user's call."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from mmfm.compiled import Compiled, compiled
from mmfm.nn.packed import PackedLinears, available
from mmfm.train.trainer import TrainConfig, Trainer


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 1))

    def forward(self, batch):
        x, y = batch
        return (self.model(x)[:, 0] - y).pow(2).mean(), {}


def _batch(step, micro, rank, world):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 8, generator=g)
    return x, x.sum(1).sin()


def _run(out, compile_step: bool):
    cfg = TrainConfig(steps=4, batch_size=16, lr=1e-2, warmup=1, progress=False, log_every=1, precision="fp32",
                      compile=compile_step)
    tr = Trainer(_MLP(), cfg, _batch, out)
    hist = tr.train()
    return tr, [h["loss"] for h in hist], torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def test_compiled_training_step_matches_eager(tmp_path):
    _, eager, sd_eager = _run(tmp_path / "eager", False)
    tr, comp, sd_comp = _run(tmp_path / "compiled", True)
    assert isinstance(tr.wrapped, Compiled) and tr.wrapped.failed is None  # it really ran compiled
    records = (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["compiled"] for ln in records] == [True] * 4
    assert len(comp) == 4 and comp[-1] < comp[0]
    assert all(abs(a - b) <= 1e-5 * max(1.0, abs(a)) for a, b in zip(eager, comp)), (eager, comp)
    assert sd_comp.keys() == sd_eager.keys()  # the model's own names, no compile wrapper prefix
    assert all(torch.allclose(sd_comp[k], sd_eager[k], atol=1e-5) for k in sd_eager)


@pytest.mark.skipif(not available(), reason="this PyTorch build has neither MKL nor oneDNN packed Linears")
def test_a_graph_the_compiler_cannot_lower_runs_eagerly_with_one_warning():
    model = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 8)).eval()
    packs = PackedLinears(model, 1)
    x = torch.randn(1, 16)
    with torch.inference_mode(), packs.active():
        want = model(x)
        f = compiled(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first, second = f(x), f(x)
    assert f.failed is not None and "graph constant" in f.failed
    assert len([w for w in caught if "torch.compile" in str(w.message)]) == 1
    assert torch.allclose(first, want, atol=1e-6) and torch.equal(first, second)
    assert compiled(f) is f


def test_compiled_decoding_gives_the_eager_tokens_without_packing(tmp_path):
    """`mmfm serve --compile`: one-answer steps through AOTInductor, prompts and batches through inductor
    (no fallback to eager anywhere), greedy tokens as eager, and the oneDNN/MKL-packed Linears of eager
    decoding are never handed to the compiler."""
    import mmfm
    from mmfm.lm.decoding import compile_decoding
    from mmfm.nn.static_decode import StaticDecoder
    from tests.lm_helpers import save_hf_folder, tiny_llama, tiny_tokenizer

    tok, _, _ = tiny_tokenizer()
    lm = mmfm.load(save_hf_folder(tiny_llama(tok.get_vocab_size()), tmp_path / "hf", tok))
    prompts = ["hello there", "the quick brown fox"]
    eager = [c.tokens for c in lm.complete(prompts, max_new_tokens=8)]
    eager_one = lm.complete(prompts[1], max_new_tokens=8)[0].tokens
    assert compile_decoding(lm, warm=(2,), max_len=32) > 0
    assert isinstance(lm.model, StaticDecoder) and isinstance(lm.model.other, Compiled)
    assert set(lm.model.runners) == {(1, 256)}  # the tiny model's window (256) is its only bucket
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a compile failure (eager fallback) warns: here it fails the test
        again = [c.tokens for c in lm.complete(prompts, max_new_tokens=8)]
        one = lm.complete(prompts[1], max_new_tokens=8)[0].tokens
    assert lm.model.failed is None and lm.model.other.failed is None
    assert again == eager and one == eager_one
    assert PackedLinears.maybe(lm.model, 1, 8, None) is None
    assert compile_decoding(lm, warm=(), max_len=32) >= 0 and not isinstance(lm.model.model, StaticDecoder)


def test_one_graph_per_attention_kernel():
    """Dynamo does not guard on sdpa_kernel: a Compiled keeps a graph per attention-kernel setting, so a call
    under math attention after one under the default kernels gets a graph traced with math (and the same
    numbers as eager under each), not the first graph again."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    attn = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(3, 17, 32)

    def f(x):
        return attn(x, x, x, need_weights=False)[0]

    fast = compiled(f)
    with torch.no_grad():
        a = fast(x)
        with sdpa_kernel([SDPBackend.MATH]):
            b = fast(x)
            eager_math = f(x)
        c = fast(x)
        eager = f(x)
    assert len(fast._by_kernel) == 2
    assert (a - eager).abs().max() < 1e-5 and (c - eager).abs().max() < 1e-5 and (b - eager_math).abs().max() < 1e-5
