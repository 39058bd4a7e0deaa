"""Flamingo's blocks against OpenFlamingo's modules on random weights (fp32, max abs diff <= 1e-5):
the Perceiver Resampler (with frame and media embeddings), the masked cross-attention (immediate and
all-previous media, text before the first image), the gated block; gates at 0 leave x unchanged, and
cached media keys/values give what the full computation gives."""

import pytest
import torch

from mmfm.nn.attention import StaticKV
from mmfm.nn.pooling import GatedCrossAttentionBlock, MaskedCrossAttention, PerceiverResampler, media_time

helpers = pytest.importorskip("open_flamingo.src.helpers")

from mmfm.interop.open_flamingo import (  # noqa: E402
    gated_from_open_flamingo,
    gated_layers_from_open_flamingo,
    perceiver_from_open_flamingo,
)


def test_perceiver_resampler_parity():
    torch.manual_seed(0)
    ref = helpers.PerceiverResampler(dim=32, depth=2, dim_head=8, heads=4, num_latents=5, max_num_media=3,
                                     max_num_frames=2).eval()
    ours = PerceiverResampler(32, depth=2, dim_head=8, heads=4, num_latents=5, max_num_media=3, max_num_frames=2).eval()
    ours.load_state_dict(perceiver_from_open_flamingo({'perceiver.' + k: v for k, v in ref.state_dict().items()}))
    x = torch.randn(2, 3, 2, 7, 32)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-5
    assert ours(x).shape == (2, 3, 5, 32)


@pytest.mark.parametrize("immediate", [True, False])
def test_gated_cross_attention_parity(immediate):
    torch.manual_seed(0)
    ref = helpers.GatedCrossAttentionBlock(dim=24, dim_visual=16, dim_head=8, heads=3,
                                           only_attend_immediate_media=immediate).eval()
    ours = GatedCrossAttentionBlock(24, 16, dim_head=8, heads=3, only_immediate=immediate).eval()
    with torch.no_grad():
        ref.attn_gate.fill_(0.7)
        ref.ff_gate.fill_(-0.4)
    full = {f"lang_encoder.gated_cross_attn_layers.2.{k}": v for k, v in ref.state_dict().items()}
    layers = gated_layers_from_open_flamingo(full)
    assert list(layers) == [2]
    ours.load_state_dict(layers[2])
    assert set(gated_from_open_flamingo(ref.state_dict())) == set(ours.state_dict())
    x = torch.randn(2, 9, 24)
    media = torch.randn(2, 3, 4, 16)
    loc = torch.zeros(2, 9, dtype=torch.bool)
    loc[0, [2, 5, 7]] = True  # text before position 2 sees no image
    loc[1, [0, 4]] = True
    with torch.no_grad():
        want = ref(x, media, media_locations=loc)
        got = ours(x, media, media_time(loc))
    if immediate:
        assert (got - want).abs().max() <= 1e-5
    else:
        # OpenFlamingo zeroes text-before-the-first-image only in the immediate mode; in the all-previous
        # mode such text attends uniformly to every image (its mask is all False, filled with -max). We
        # keep the paper's rule in both modes: no image before, no visual signal. Every other row agrees.
        seen = media_time(loc) > 0
        assert (got - want)[seen].abs().max() <= 1e-5 and not torch.allclose(got[~seen], want[~seen])
    # text before the first image gets nothing from the images
    with torch.no_grad():
        attn_only = ours.attn(x, media, media_time(loc))
    assert attn_only[0, :2].abs().max() == 0 and attn_only[0, 2:].abs().max() > 0
    # cached media (decoding after the prompt): keys/values projected once, same result as OpenFlamingo's
    cache = StaticKV()
    with torch.no_grad():
        t_all = media_time(loc)[:, -1:].expand(2, 3)
        first = ours(x[:, :3], media, t_all, cache)
        again = ours(x[:, :3], None, t_all, cache)
        ref_cached = ref(x[:, :3], media, media_locations=loc, use_cached_media=True)
    assert torch.equal(first, again) and (again - ref_cached).abs().max() <= 1e-5


def test_gates_at_zero_leave_the_text_unchanged():
    block = GatedCrossAttentionBlock(24, 16, dim_head=8, heads=3)
    x = torch.randn(2, 5, 24)
    loc = torch.zeros(2, 5, dtype=torch.bool)
    loc[:, 0] = True
    assert torch.equal(block(x, torch.randn(2, 1, 4, 16), media_time(loc)), x)


def test_resampler_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="batch, media, frames"):
        PerceiverResampler(16, depth=1, dim_head=4, heads=2, num_latents=3)(torch.randn(2, 5, 16))


def test_masked_cross_attention_all_previous_media():
    attn = MaskedCrossAttention(8, 8, dim_head=4, heads=2, only_immediate=False)
    media = torch.randn(1, 2, 3, 8)
    loc = torch.tensor([[True, False, True, False]])
    x = torch.randn(1, 4, 8)
    full = attn(x, media, media_time(loc))
    only_first = attn(x, media[:, :1], media_time(loc).clamp(max=1))
    assert torch.allclose(full[:, :2], only_first[:, :2], atol=1e-6)  # before image 2: image 1 only
    assert not torch.allclose(full[:, 2:], only_first[:, 2:])
