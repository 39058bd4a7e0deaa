"""Shared blocks: masks do what they say, the KV cache reproduces the full forward, the ViT and the
text tower behave as CLIP's."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmfm.nn import (
    MLP,
    Attention,
    KVCache,
    QuickGELU,
    RMSNorm,
    RotaryEmbedding,
    TextTransformer,
    Transformer,
    VisionTransformer,
    apply_rotary,
    causal_mask,
    combine_masks,
    padding_mask,
    resize_pos_embed,
)

torch.manual_seed(0)


def manual_attention(attn: Attention, x, mask=None, context=None):
    """Softmax attention written out, with the module's own weights."""
    b, t, _ = x.shape
    h, kvh, d = attn.heads, attn.kv_heads, attn.head_dim
    if attn.cross:
        q = attn.q(x)
        k, v = attn.kv(context).chunk(2, -1)
    else:
        q, k, v = attn.qkv(x).split([h * d, kvh * d, kvh * d], -1)
    q = q.view(b, t, h, d).transpose(1, 2)
    k = k.view(b, -1, kvh, d).transpose(1, 2).repeat_interleave(h // kvh, 1)
    v = v.view(b, -1, kvh, d).transpose(1, 2).repeat_interleave(h // kvh, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    y = s.softmax(-1) @ v
    return attn.out(y.transpose(1, 2).reshape(b, t, h * d))


def test_boolean_mask_matches_written_out_attention():
    attn = Attention(48, 4, kv_heads=2)
    x = torch.randn(2, 7, 48)
    mask = torch.rand(2, 1, 7, 7) > 0.4
    mask |= torch.eye(7, dtype=torch.bool)  # every row keeps a key
    assert torch.allclose(attn(x, mask=mask), manual_attention(attn, x, mask), atol=1e-5)
    assert torch.allclose(attn(x), manual_attention(attn, x), atol=1e-5)


def test_cross_attention_matches_written_out_attention():
    attn = Attention(32, 4, kv_dim=24)
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 9, 24)
    mask = torch.rand(2, 1, 5, 9) > 0.3
    mask[..., 0] = True
    assert torch.allclose(attn(x, context=ctx, mask=mask), manual_attention(attn, x, mask, ctx), atol=1e-5)
    with pytest.raises(ValueError):
        attn(x)


def test_one_query_grouped_attention_matches_written_out_attention():
    """A decoding step (one query) with grouped-query heads takes the grouped path in `_sdpa`; with
    and without a padding mask it equals attention written out with K/V repeated per head."""
    attn = Attention(48, 6, kv_heads=2, kv_dim=24)
    x, ctx = torch.randn(3, 1, 48), torch.randn(3, 9, 24)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, :4] = False  # left padding
    mask[2, 7:] = False
    assert torch.allclose(attn(x, ctx), manual_attention(attn, x, context=ctx), atol=1e-5)
    m = padding_mask(mask)
    assert torch.allclose(attn(x, ctx, mask=m), manual_attention(attn, x, m, context=ctx), atol=1e-5)
    assert not torch.allclose(attn(x, ctx, mask=m)[0], attn(x, ctx)[0], atol=1e-3)  # the mask mattered


def test_causal_mask_hides_the_future():
    attn = Attention(32, 4)
    x = torch.randn(1, 8, 32)
    y = attn(x, is_causal=True)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, 32)
    y2 = attn(x2, is_causal=True)
    assert torch.allclose(y[:, :5], y2[:, :5], atol=1e-6)
    assert not torch.allclose(y[:, 5:], y2[:, 5:], atol=1e-3)
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


def test_padding_mask_ignores_padded_keys_and_left_padding_stays_finite():
    attn = Attention(32, 4)
    x = torch.randn(2, 6, 32)
    am = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # row 0 left-padded
    mask = combine_masks(padding_mask(am), causal_mask(6))
    y = attn(x, mask=mask)
    assert torch.isfinite(y).all()
    x2 = x.clone()
    x2[0, :2] = torch.randn(2, 32) * 10  # change only the padding
    y2 = attn(x2, mask=mask)
    assert torch.allclose(y[0, 2:], y2[0, 2:], atol=1e-5)
    # the real tokens of the padded row equal the same tokens run alone
    alone = attn(x[:1, 2:], is_causal=True)
    assert torch.allclose(y[0, 2:], alone[0], atol=1e-5)


@pytest.mark.parametrize("variant", ["gpt", "llama"])
def test_kv_cache_token_by_token_equals_full_forward(variant):
    if variant == "gpt":
        kw = dict(act="gelu")
        rope = None
    else:
        kw = dict(norm_kind="rmsnorm", mlp_kind="swiglu", kv_heads=2, bias=False)
        rope = RotaryEmbedding(16)
    net = Transformer(3, 64, 4, **kw).eval()
    x = torch.randn(2, 11, 64)
    pos = torch.arange(11)
    full, _ = net(x, is_causal=True, rope=rope(pos) if rope else None)
    caches = [KVCache(2, net.blocks[0].attn.kv_heads, 16, 16) for _ in range(3)]
    outs = []
    # prefill 4 tokens, then one at a time
    steps = [(0, 4)] + [(i, i + 1) for i in range(4, 11)]
    for a, b in steps:
        y, _ = net(x[:, a:b], is_causal=True, rope=rope(pos[a:b]) if rope else None, caches=caches)
        outs.append(y)
    inc = torch.cat(outs, 1)
    assert (inc - full).abs().max() <= 1e-5
    with pytest.raises(RuntimeError):
        net(torch.randn(2, 6, 64), is_causal=True, caches=caches)  # 11 + 6 > 16


@pytest.mark.parametrize("padded", [False, True])
def test_prefill_keeping_the_last_positions_fills_the_same_cache(padded):
    """logits_to_keep runs the last block on the kept positions only: the same logits, the same cache,
    the same next step as a full prefill."""
    from mmfm.nn.decoder import DecoderConfig, DecoderLM

    torch.manual_seed(0)
    lm = DecoderLM(DecoderConfig(vocab_size=60, dim=32, layers=3, heads=4, kv_heads=2, hidden=64)).eval()
    ids = torch.randint(0, 60, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    if padded:
        mask[0, :4] = 0
    full_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    pos = DecoderLM.positions(full_mask, 0, 10)
    outs = []
    for keep in (0, 2):
        caches = lm.new_caches(2, 12)
        with torch.no_grad():
            out = lm(ids, attention_mask=mask if padded else None, position_ids=pos[:, :9], caches=caches,
                     logits_to_keep=keep)
            step = lm(ids[:, :1], attention_mask=full_mask, position_ids=pos[:, 9:], caches=caches).logits
        outs.append((out, caches, step))
    (full, c_full, s_full), (kept, c_kept, s_kept) = outs
    assert kept.logits.shape == (2, 2, 60) and kept.last_hidden.shape == (2, 2, 32)
    assert (kept.logits - full.logits[:, -2:]).abs().max() <= 1e-5
    for a, b in zip(c_full, c_kept):
        assert torch.equal(a.k[:, :, :10], b.k[:, :, :10]) and torch.equal(a.v[:, :, :10], b.v[:, :, :10])
    assert (s_kept - s_full).abs().max() <= 1e-5


@pytest.mark.parametrize("kv_heads", [2, 4])
def test_a_padded_batch_runs_unpadded_and_equals_each_row_alone(kv_heads):
    """Left and right padding (a prefill, a training batch): norms, projections and MLPs run on the
    real tokens only (plan.Unpadded); logits, the cache and the gradients equal each row run alone."""
    from mmfm.nn import plan
    from mmfm.nn.decoder import DecoderConfig, DecoderLM

    torch.manual_seed(0)
    lm = DecoderLM(DecoderConfig(vocab_size=60, dim=32, layers=2, heads=4, kv_heads=kv_heads, hidden=64))
    ids = torch.randint(0, 60, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    mask[2, 5:] = 0  # right padding
    seen = []
    real = plan.Unpadded

    class Spy(real):
        def __init__(self, keep):
            super().__init__(keep)
            seen.append(int(self.index.numel()))

    plan.Unpadded = Spy
    try:
        out = lm(ids, attention_mask=mask)
        caches = lm.new_caches(3, 8)
        with torch.no_grad():
            lm(ids, attention_mask=mask, caches=caches)
    finally:
        plan.Unpadded = real
    assert seen == [18, 18]  # 24 positions, 6 of them padding
    loss = sum(out.logits[r][mask[r].bool()].logsumexp(-1).sum() for r in range(3))
    loss.backward()
    batched_grad = lm.transformer.blocks[0].mlp.gate_up.weight.grad.clone()
    lm.zero_grad()
    alone_loss = 0
    for r in range(3):
        keep = mask[r].bool()
        alone = lm(ids[r : r + 1, keep]).logits[0]
        assert (out.logits[r][keep] - alone).abs().max() <= 1e-5
        alone_loss = alone_loss + alone.logsumexp(-1).sum()
        c = lm.new_caches(1, 8)
        with torch.no_grad():
            lm(ids[r : r + 1, keep], caches=c)
        n = int(keep.sum())
        for a, b in zip(caches, c):
            assert (a.k[r][:, keep] - b.k[0][:, :n]).abs().max() <= 1e-5
            assert (a.v[r][:, keep] - b.v[0][:, :n]).abs().max() <= 1e-5
    alone_loss.backward()
    assert (batched_grad - lm.transformer.blocks[0].mlp.gate_up.weight.grad).abs().max() <= 1e-4
    assert out.logits.shape == (3, 8, 60) and torch.isfinite(out.logits).all()


def test_kv_cache_reorder_selects_rows():
    c = KVCache(3, 2, 4, 8)
    k = torch.randn(3, 2, 2, 8)
    c.update(k, k)
    c.reorder(torch.tensor([2, 2, 0]))
    assert torch.equal(c.k[:, :, :2], k[[2, 2, 0]])


def test_activations_and_norms():
    x = torch.randn(4, 10)
    assert torch.allclose(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    mlp = MLP(10, 20, act="quick_gelu")
    assert mlp(x).shape == (4, 10)
    n = RMSNorm(10, eps=1e-6)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.allclose(n(x), ref, atol=1e-6)
    with pytest.raises(ValueError):
        MLP(4, 4, act="nope")


def test_vit_hidden_states_and_position_resize():
    vit = VisionTransformer(32, 8, 48, 3, 4, output_dim=16).eval()
    imgs = torch.randn(2, 3, 32, 32)
    out = vit(imgs, output_hidden_states=True)
    assert out.pooled.shape == (2, 16)
    assert len(out.hidden_states) == 4 and out.hidden_states[0].shape == (2, 17, 48)
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    # same grid: identity; a new resolution works and keeps the class token's embedding
    assert resize_pos_embed(vit.pos_embed, (4, 4)) is vit.pos_embed
    new = resize_pos_embed(vit.pos_embed, (6, 6))
    assert new.shape == (37, 48) and torch.equal(new[0], vit.pos_embed[0])
    # bicubic resampling of a constant field is that constant
    const = torch.cat([torch.zeros(1, 3), torch.ones(16, 3)])
    assert torch.allclose(resize_pos_embed(const, (7, 7))[1:], torch.ones(49, 3), atol=1e-5)
    assert vit(torch.randn(1, 3, 48, 48)).pooled.shape == (1, 16)
    vit.resize_grid(48)
    assert vit.pos_embed.shape == (37, 48)


def test_vit_gradient_checkpointing_same_gradients():
    vit = VisionTransformer(16, 8, 32, 2, 4, output_dim=8)
    x = torch.randn(2, 3, 16, 16)
    vit(x).pooled.sum().backward()
    g1 = [p.grad.clone() for p in vit.parameters()]
    vit.zero_grad()
    vit.set_grad_checkpointing(True)
    vit(x).pooled.sum().backward()
    for a, p in zip(g1, vit.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_text_transformer_pools_at_first_eot():
    eot = 99
    tt = TextTransformer(
        vocab_size=100, context_length=12, width=32, layers=2, heads=4, output_dim=8, eot_token_id=eot
    ).eval()
    ids = torch.randint(1, 90, (2, 12))
    ids[0, 4], ids[0, 8] = eot, eot
    ids[1, 10] = eot
    out = tt(ids)
    ids2 = ids.clone()
    ids2[0, 5:] = torch.randint(1, 90, (7,))  # everything after the first EOT of row 0
    ids2[1, 11] = 0
    out2 = tt(ids2)
    assert torch.allclose(out.pooled, out2.pooled, atol=1e-6)
    proj_in = out.last_hidden_state[0, 4]
    assert torch.allclose(out.pooled[0], tt.proj(proj_in), atol=1e-6)
    # with an explicit attention mask on right padding: same result
    am = torch.ones_like(ids)
    am[0, 5:] = 0
    assert torch.allclose(tt(ids, attention_mask=am).pooled, out.pooled, atol=1e-5)
    with pytest.raises(ValueError):
        tt(torch.zeros(1, 13, dtype=torch.long))


def test_bf16_autocast_runs_and_is_close():
    vit = VisionTransformer(32, 8, 64, 2, 4, output_dim=16).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = vit(x).pooled
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = vit(x).pooled
    assert y.dtype == torch.bfloat16
    assert F.cosine_similarity(ref, y.float()).min() > 0.99


def test_conv_stem_keeps_the_token_grid():
    vit = VisionTransformer(64, 8, 48, 1, 4, output_dim=8, stem="conv")
    out = vit(torch.randn(2, 3, 64, 64), output_hidden_states=True)
    assert out.hidden_states[0].shape == (2, 65, 48)
    with pytest.raises(ValueError):
        VisionTransformer(60, 6, 48, 1, 4, stem="conv")


def test_rotary_matches_the_rotate_half_formula():
    # Llama / RoFormer: x * cos + rotate_half(x) * sin with rotate_half(x) = [-x2, x1]
    rope = RotaryEmbedding(16, theta=500.0)
    pos = torch.tensor([[0, 3, 7], [1, 2, 40]])
    x = torch.randn(2, 4, 3, 16)
    freqs = pos.float()[..., None] * (1.0 / 500.0 ** (torch.arange(0, 16, 2).float() / 16))
    cos, sin = torch.cat([freqs, freqs], -1).cos()[:, None], torch.cat([freqs, freqs], -1).sin()[:, None]
    want = x * cos + torch.cat([-x[..., 8:], x[..., :8]], -1) * sin
    assert torch.equal(apply_rotary(x, *rope(pos)), want)
    assert torch.equal(apply_rotary(x[:1], *rope(pos[0])), want[:1])  # (T, Dh) tables broadcast too
