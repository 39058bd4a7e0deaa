"""Flamingo's blocks against OpenFlamingo's modules on random weights (fp32, max abs diff <= 1e-5):
the Perceiver Resampler (with frame and media embeddings), the masked cross-attention (immediate and
all-previous media, text before the first image), the gated block; gates at 0 leave x unchanged, and
cached media keys/values give what the full computation gives."""

import pytest
import torch

from mmfm.nn.attention import StaticKV
from mmfm.nn.gated_xattn import GatedCrossAttentionBlock, MaskedCrossAttention, media_time
from mmfm.nn.perceiver import PerceiverResampler

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


def test_whole_model_parity_with_open_flamingo_both_directions(tmp_path):
    """OpenFlamingo's Flamingo (tiny open_clip ViT + tiny HF Llama, gated blocks every 2nd layer) saved
    as its three parts (open_clip folder, HF Llama folder, checkpoint.pt) -> mmfm.interop.load_open_flamingo
    -> the same logits; and mmfm's state written back under OpenFlamingo's names -> the same logits."""
    import json

    from open_clip.model import CLIP as OpenCLIP
    from open_flamingo.src.flamingo import Flamingo as OFFlamingo
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin
    from open_flamingo.src.utils import extend_instance
    from safetensors.torch import save_file

    from mmfm.interop.open_flamingo import load_open_flamingo, open_flamingo_state_dict
    from tests.lm_helpers import save_hf_folder, tiny_llama, tiny_tokenizer

    V = 384

    def reference(seed):
        torch.manual_seed(seed)
        oc_cfg = {
            "embed_dim": 24,
            "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 48, "layers": 2, "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 99, "width": 40, "heads": 5, "layers": 2},
        }
        clip = OpenCLIP(**oc_cfg).eval()
        lm = tiny_llama(V, seed=seed, tie=False, layers=4)
        return oc_cfg, clip, lm

    oc_cfg, clip, lm = reference(0)
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / "open_clip_config.json").write_text(json.dumps({"model_cfg": oc_cfg, "preprocess_cfg": {}}))
    save_file(
        {k: v.contiguous() for k, v in clip.state_dict().items()}, tmp_path / "oc" / "open_clip_model.safetensors"
    )
    save_hf_folder(lm, tmp_path / "llama", tiny_tokenizer(V)[0])

    def wrap(clip, lm):
        clip.visual.output_tokens = True
        extend_instance(lm, FlamingoLMMixin)
        lm.set_decoder_layers_attr_name("model.layers")
        lm.resize_token_embeddings(V + 3)  # <|endofchunk|>, <image>, <PAD>, as OpenFlamingo's factory adds them
        return OFFlamingo(
            clip, lm, eoc_token_id=V, media_token_id=V + 1, vis_dim=48, cross_attn_every_n_layers=2
        ).eval()

    ref = wrap(clip, lm)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(("attn_gate", "ff_gate")):
                p.fill_(0.6)
            elif name.startswith("perceiver.") or "gated_cross_attn" in name:
                p.add_(0.02 * torch.randn_like(p))
    torch.save(ref.state_dict(), tmp_path / "checkpoint.pt")
    ours = load_open_flamingo(tmp_path / "checkpoint.pt", tmp_path / "oc", tmp_path / "llama")
    assert ours.config.cross_attn_every_n_layers == 2 and ours.config.num_latents == 64
    assert (ours.config.image_token_id, ours.config.eoc_token_id, ours.config.new_tokens) == (V + 1, V, 3)
    ids = torch.tensor([[5, V + 1, 7, 8, V, V + 1, 9, 10, 11, V, 12]])
    vx = torch.randn(1, 2, 1, 3, 32, 32)
    with torch.no_grad():
        want = ref(vx, ids).logits
        got = ours(ids, vx).logits
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5
    # and back: a fresh OpenFlamingo model with the same frozen parts takes mmfm's learned parts by name
    back = wrap(*reference(0)[1:])
    missing, unexpected = back.load_state_dict(open_flamingo_state_dict(ours), strict=False)
    assert not unexpected and not any(k.startswith("perceiver.") or "gated" in k for k in missing)
    with torch.no_grad():
        assert (back(vx, ids).logits - want).abs().max() <= 1e-5
