"""CoCa: parity with open_clip's CoCa on a tiny random config, cached generation equal to the
uncached forward, the loss, and generation through the shared generator (greedy and beams)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfm.interop.coca import config_from_open_clip, from_open_clip
from mmfm.models.coca import CoCa, CoCaConfig
from mmfm.nn.generate import GenerationConfig, generate

open_clip = pytest.importorskip("open_clip")
CFG = dict(embed_dim=24, multimodal_cfg=dict(context_length=12, vocab_size=100, width=24, heads=2, layers=2),
           text_cfg=dict(context_length=12, vocab_size=100, width=24, heads=2, layers=2, embed_cls=True,
                         output_tokens=True, pad_id=0),
           vision_cfg=dict(image_size=32, layers=2, width=40, head_width=20, patch_size=8, attentional_pool=True,
                           attn_pooler_heads=2, attn_pooler_queries=5, output_tokens=True))
IDS = torch.tensor([[1, 5, 9, 33, 2, 0, 0, 0, 0, 0, 0, 0], [1, 7, 8, 9, 10, 11, 12, 2, 0, 0, 0, 0],
                    [1, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 2]])


@pytest.fixture(scope="module")
def pair():
    from open_clip.coca_model import CoCa as RefCoCa

    torch.manual_seed(0)
    ref = RefCoCa(**CFG).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
    ours = CoCa(config_from_open_clip(CFG)).eval()
    ours.load_state_dict(from_open_clip(ref.state_dict()))
    return ref, ours


def test_parity_with_open_clip(pair):
    ref, ours = pair
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        r, o = ref(x, IDS), ours(x, IDS)
        assert (r["image_features"] - o.image_features).abs().max() <= 1e-5
        assert (r["text_features"] - o.text_features).abs().max() <= 1e-5
        assert r["logits"].shape == o.logits.shape == (3, 11, 100)
        assert (r["logits"] - o.logits).abs().max() <= 1e-5
        assert torch.equal(r["labels"], o.labels)
        assert (ref.encode_image(x) - ours.encode_image(x, normalize=True)).abs().max() <= 1e-5


def test_cached_decoding_equals_the_full_forward(pair):
    _, ours = pair
    x = torch.randn(2, 3, 32, 32)
    seq = IDS[2:3].expand(2, -1)  # no padding
    cap = ours.captioner()
    with torch.no_grad():
        full = ours(x, seq).logits
        _, toks = ours.encode_image_tokens(x)
        caches = cap.new_caches(2, 12)
        pos = torch.arange(12)[None].expand(2, -1)
        steps = [cap(seq[:, :4], position_ids=pos[:, :4], caches=caches, image_tokens=toks).logits]
        steps += [cap(seq[:, t : t + 1], position_ids=pos[:, t : t + 1], caches=caches, image_tokens=toks).logits
                  for t in range(4, 11)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


def test_generation_greedy_and_beams_follow_the_model(pair):
    _, ours = pair
    x = torch.randn(2, 3, 32, 32)
    cap = ours.captioner()
    with torch.no_grad():
        _, toks = ours.encode_image_tokens(x)
        start = torch.ones(2, 1, dtype=torch.long)
        greedy = generate(
            cap, start, config=GenerationConfig(max_new_tokens=6), forward_kwargs={"image_tokens": toks}
        ).tokens
        # greedy = argmax of the uncached model at every step
        for row in range(2):
            seq = [1]
            for _ in range(6):
                logits = ours.decode(
                    ours.text(torch.tensor([seq + [0]])).last_hidden_state[:, :-1], toks[row : row + 1]
                )
                seq.append(int(logits[0, -1].argmax()))
            assert seq[1:] == greedy[row]
        beams = generate(cap, start, config=GenerationConfig(max_new_tokens=6, num_beams=3),
                         forward_kwargs={"image_tokens": toks})
    assert [len(t) for t in beams.tokens] == [6, 6]


def test_loss_is_weighted_contrastive_plus_caption(pair):
    _, ours = pair
    x = torch.randn(3, 3, 32, 32)
    out = ours(x, IDS)
    total, parts = ours.loss(out)
    caption = F.cross_entropy(out.logits.transpose(1, 2), out.labels, ignore_index=0)
    assert torch.allclose(parts["caption_loss"], caption)
    assert torch.allclose(total, 1.0 * parts["contrastive_loss"] + 2.0 * caption)
    total.backward()
    assert ours.lm_head.weight.grad is not None and ours.attn_pool.query.grad is not None


def test_paper_pooler_layout_runs():
    c = config_from_open_clip(CFG)
    c.pooler = "separate"
    m = CoCa(CoCaConfig.from_dict(c.to_dict()))
    img, toks = m.encode_image_tokens(torch.randn(2, 3, 32, 32))
    assert img.shape == (2, 24) and toks.shape == (2, 5, 24)


def test_open_clip_folder_and_file_load_through_mmfm_load(pair, tmp_path):
    import json

    import mmfm
    from mmfm.checkpoint import save_safetensors

    ref, ours = pair
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": CFG}))
    save_safetensors(ref.state_dict(), folder / "open_clip_model.safetensors")
    torch.save(ref.state_dict(), tmp_path / "coca.pt")
    x = torch.randn(2, 3, 32, 32)
    for loaded in (mmfm.load(folder), mmfm.load(tmp_path / "coca.pt", config=CFG)):
        assert isinstance(loaded, CoCa)
        with torch.no_grad():
            assert (loaded(x, IDS[:2]).logits - ref(x, IDS[:2])["logits"]).abs().max() <= 1e-5


def test_conversion_back_to_open_clip_and_mmfm_folders(pair, tmp_path):
    import json

    from open_clip.coca_model import CoCa as RefCoCa

    import mmfm
    from mmfm.checkpoint import load_state_dict

    ref, ours = pair
    mmfm.save(ours, tmp_path / "back", format="open_clip")
    cfg = json.loads((tmp_path / "back" / "open_clip_config.json").read_text())["model_cfg"]
    cfg.pop("quick_gelu")
    again = RefCoCa(**cfg).eval()
    again.load_state_dict(load_state_dict(tmp_path / "back" / "open_clip_model.safetensors"))
    ours.save_pretrained(tmp_path / "mine")
    mine = mmfm.load(tmp_path / "mine")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = ref(x, IDS)
        assert (again(x, IDS)["logits"] - want["logits"]).abs().max() <= 1e-5
        assert (again(x, IDS)["image_features"] - want["image_features"]).abs().max() <= 1e-5
        assert torch.equal(mine(x, IDS).logits, ours(x, IDS).logits)


def test_a_clip_checkpoint_is_not_taken_for_a_coca(tmp_path):
    from mmfm.errors import CheckpointError
    from mmfm.models.clip import CLIP, CLIPConfig

    CLIP(CLIPConfig(embed_dim=16, vision=dict(image_size=16, patch_size=8, width=16, layers=1, heads=2),
                    text=dict(vocab_size=50, context_length=8, width=16, layers=1, heads=2, eot_token_id=49,
                              sot_token_id=48))).save_pretrained(tmp_path / "clip")
    with pytest.raises(CheckpointError, match="not a CoCa"):
        CoCa.from_pretrained(tmp_path / "clip")
