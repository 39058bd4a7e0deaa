"""Decoding on oneDNN-packed weights (mmfm.nn.packed): the same tokens and near-identical logits as the
plain weights, the model left unaltered, and a changed weight repacked rather than served stale."""

import pytest
import torch
from torch import nn

from mmfm.nn import packed
from mmfm.nn.decoder import DecoderConfig, DecoderLM
from mmfm.nn.generate import GenerationConfig, generate
from mmfm.nn.lora import LoRALinear

pytestmark = pytest.mark.skipif(
    not packed.available(),
    reason="this PyTorch build has neither MKL nor oneDNN: generation never packs there "
    "(PackedLinears.maybe returns None), so there is nothing to compare; CI's torch has it",
)


def _lm(dtype=torch.float32):
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=300, dim=64, layers=2, heads=4, kv_heads=2, hidden=128, max_seq_len=128)
    return DecoderLM(cfg).to(dtype).eval()


def _prompts():
    ids = torch.randint(3, 300, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_decoding_matches_plain(dtype):
    lm = _lm(dtype)
    ids, mask = _prompts()
    run = lambda p: generate(lm, ids, mask, config=GenerationConfig(max_new_tokens=12, prepack=p))  # noqa: E731
    assert run(True).tokens == run(False).tokens
    packs = packed.PackedLinears(lm, 3)
    # qkv, out, gate_up, down per block + the (tied) head; none for bf16 on a host oneDNN cannot pack it for
    # (AVX2 only): those Linears stay plain instead of raising
    assert len(packs.forwards) == (2 * 4 + 1 if packed._backend(dtype) else 0)
    x = torch.randn(3, 1, 64).to(dtype)
    with torch.inference_mode():
        plain = lm(inputs_embeds=x).logits
        with packs.active():
            assert sum(isinstance(m, packed.PackedLinear) for m in lm.modules()) == len(packs.forwards)
            fast = lm(inputs_embeds=x).logits
    assert (fast.float() - plain.float()).abs().max() <= (0 if dtype == torch.bfloat16 else 1e-5)
    assert not any(isinstance(m, packed.PackedLinear) for m in lm.modules())  # the model is left as it was


def test_a_changed_weight_is_repacked():
    lm = _lm()
    ids, mask = _prompts()
    cfg = GenerationConfig(max_new_tokens=8, prepack=True)
    before = generate(lm, ids, mask, config=cfg).tokens
    assert getattr(lm.lm_head, "_mmfm_pack", None) is not None  # kept for the next generation
    with torch.no_grad():
        lm.lm_head.weight[7] += 10.0  # in place, like an optimizer step: token 7 now always wins
    after = generate(lm, ids, mask, config=cfg).tokens
    assert after != before and all(t == 7 for row in after for t in row)
    assert after == generate(lm, ids, mask, config=GenerationConfig(max_new_tokens=8, prepack=False)).tokens


def test_lora_is_packed_merged_in_fp32_only_and_autocast_opts_out():
    from mmfm.nn.lora import apply_lora

    lm = _lm()
    apply_lora(lm, ["attn.qkv", "mlp.down"], r=4, alpha=8)
    with torch.no_grad():
        for m in lm.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0, 0.5)  # a trained adapter: its update matters
    packs = packed.PackedLinears(lm, 3)
    assert sum(isinstance(m, LoRALinear) for m, _ in packs.forwards) == 2 * 2
    ids, mask = _prompts()
    run = lambda p: generate(lm, ids, mask, config=GenerationConfig(max_new_tokens=12, prepack=p)).tokens  # noqa: E731
    assert run(True) == run(False)
    x = torch.randn(3, 1, 64)
    with torch.inference_mode():
        plain = lm(inputs_embeds=x).logits
        with packs.active():
            assert sum(isinstance(m, packed.PackedLinear) for m in lm.modules()) == len(packs.forwards)
            fast = lm(inputs_embeds=x).logits
    assert (fast - plain).abs().max() <= 1e-5
    qkv = lm.transformer.blocks[0].attn.qkv
    old_pack = qkv._mmfm_pack[1]
    with torch.no_grad():  # a training step on the adapter alone is seen
        qkv.lora_b.add_(1.0)
    again = packed.PackedLinears(lm, 3)
    assert qkv._mmfm_pack[1] is not old_pack
    with torch.inference_mode():
        plain = lm(inputs_embeds=x).logits
        with again.active():
            assert (lm(inputs_embeds=x).logits - plain).abs().max() <= 1e-5

    model = nn.Sequential(nn.Linear(8, 8), LoRALinear(8, 8, r=2, alpha=4).to(torch.bfloat16))
    assert [m for m, _ in packed.PackedLinears(model, 2).forwards] == [model[0]]  # bf16 LoRA is not merged
    assert packed.PackedLinears.maybe(model, 2, 32, None) is not None
    assert packed.PackedLinears.maybe(model, 2, 2, None) is None  # too few steps to pay for packing
    assert packed.PackedLinears.maybe(model, 2, 32, False) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert packed.PackedLinears.maybe(model, 2, 32, True) is None
