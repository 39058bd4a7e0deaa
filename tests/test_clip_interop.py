"""CLIP checkpoints from transformers and open_clip load into mmfm and give the same outputs (fp32,
max abs diff <= 1e-5), convert back, and never load silently wrong."""

import json

import pytest
import torch

import mmfm
from mmfm.errors import CheckpointError

TOL = 1e-5


def hf_config(act="quick_gelu", legacy_eos=False):
    from transformers import CLIPConfig

    text = dict(vocab_size=99, hidden_size=40, intermediate_size=37, num_hidden_layers=2, num_attention_heads=5,
                max_position_embeddings=16, hidden_act=act, bos_token_id=97, eos_token_id=2 if legacy_eos else 98,
                pad_token_id=0)
    vision = dict(hidden_size=48, intermediate_size=50, num_hidden_layers=2, num_attention_heads=3, image_size=30,
                  patch_size=6, hidden_act=act)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 30, 30, generator=g)
    ids = torch.randint(3, 97, (4, 16), generator=g)
    ids[:, 0] = 97
    for row, pos in enumerate((5, 15, 9, 1)):
        ids[row, pos] = 98
    return x, ids


def hf_outputs(m, x, ids):
    with torch.no_grad():
        fi = m.get_image_features(pixel_values=x)
        ft = m.get_text_features(input_ids=ids)
        fi = fi if torch.is_tensor(fi) else fi.pooler_output
        ft = ft if torch.is_tensor(ft) else ft.pooler_output
        return fi, ft, m(input_ids=ids, pixel_values=x).logits_per_image


def ours_outputs(m, x, ids):
    with torch.no_grad():
        return m.encode_image(x), m.encode_text(ids), m(x, ids).logits_per_image


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_hf_clip_parity_both_directions(tmp_path, act, weights):
    from transformers import CLIPModel

    torch.manual_seed(0)
    ref = CLIPModel(hf_config(act)).eval()
    folder = tmp_path / "hf"
    ref.save_pretrained(folder)
    if weights == "bin":  # the older layout: a torch pickle, which mmfm reads with weights_only=True
        (folder / "model.safetensors").unlink()
        torch.save(ref.state_dict(), folder / "pytorch_model.bin")
    ours = mmfm.load(folder)
    assert ours.config.vision.act == act and ours.config.text.mlp_dim == 37
    x, ids = inputs()
    for a, b in zip(hf_outputs(ref, x, ids), ours_outputs(ours, x, ids)):
        assert (a - b).abs().max() <= TOL
    back = tmp_path / "back"
    mmfm.save(ours, back, format="hf")
    again = CLIPModel.from_pretrained(back).eval()
    for a, b in zip(hf_outputs(ref, x, ids), hf_outputs(again, x, ids)):
        assert (a - b).abs().max() <= TOL


def test_hf_legacy_eos_pools_at_argmax(tmp_path):
    from transformers import CLIPModel

    torch.manual_seed(1)
    ref = CLIPModel(hf_config(legacy_eos=True)).eval()
    ref.save_pretrained(tmp_path)
    ours = mmfm.load(tmp_path)
    assert ours.config.text.eot_token_id == 98  # the argmax id, vocab_size - 1
    x, ids = inputs()
    for a, b in zip(hf_outputs(ref, x, ids), ours_outputs(ours, x, ids)):
        assert (a - b).abs().max() <= TOL


def open_clip_cfg(quick_gelu):
    return {
        "embed_dim": 24,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": 30, "patch_size": 6, "width": 48, "layers": 2, "head_width": 16, "mlp_ratio": 2.5},
        "text_cfg": {"context_length": 16, "vocab_size": 99, "width": 40, "heads": 5, "layers": 2},
    }


def oc_outputs(m, x, ids):
    with torch.no_grad():
        fi, ft = m.encode_image(x), m.encode_text(ids)
        logits = (
            m.logit_scale.exp()
            * torch.nn.functional.normalize(fi, dim=-1)
            @ torch.nn.functional.normalize(ft, dim=-1).T
        )
        return fi, ft, logits


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_open_clip_parity_both_directions(tmp_path, quick_gelu):
    from open_clip.model import CLIP as OpenCLIP
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    cfg = open_clip_cfg(quick_gelu)
    ref = OpenCLIP(**cfg).eval()
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, folder / "open_clip_model.safetensors")
    ours = mmfm.load(folder)
    assert ours.config.vision.act == ("quick_gelu" if quick_gelu else "gelu")
    x, ids = inputs()
    for a, b in zip(oc_outputs(ref, x, ids), ours_outputs(ours, x, ids)):
        assert (a - b).abs().max() <= TOL
    # a training checkpoint file ({"state_dict": {"module.*": ...}}) with its config beside it
    ckpt = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, ckpt)
    from_file = mmfm.load(ckpt, config=cfg)
    assert (from_file.encode_image(x) - ours.encode_image(x)).abs().max() == 0
    # and back into open_clip
    back = tmp_path / "back"
    mmfm.save(ours, back, format="open_clip")
    spec = json.loads((back / "open_clip_config.json").read_text())["model_cfg"]
    again = OpenCLIP(**spec).eval()
    again.load_state_dict(load_file(back / "open_clip_model.safetensors"), strict=True)
    for a, b in zip(oc_outputs(ref, x, ids), oc_outputs(again, x, ids)):
        assert (a - b).abs().max() <= TOL


def tiny_mmfm(tmp_path):
    from mmfm.models.clip import CLIP, CLIPConfig
    from mmfm.text.tokenizer import CLIPTokenizer

    tok = CLIPTokenizer.world(context_length=16)
    m = CLIP(CLIPConfig(embed_dim=16, vision=dict(image_size=32, patch_size=8, width=32, layers=1, heads=2),
                        text=dict(vocab_size=tok.vocab_size, context_length=16, width=32, layers=1, heads=2,
                                  sot_token_id=tok.sot_token_id, eot_token_id=tok.eot_token_id), tokenizer="world"))
    m.tokenizer = tok
    m.save_pretrained(tmp_path / "m")
    return m, tmp_path / "m"


def test_mmfm_round_trip(tmp_path):
    m, folder = tiny_mmfm(tmp_path)
    again = mmfm.load(folder)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again.encode_image(x), m.eval().encode_image(x))
    assert again.tokenizer is not None and again.tokenizer.eot_token_id == m.config.text.eot_token_id


def test_mismatches_raise_checkpoint_error(tmp_path):
    from transformers import CLIPModel

    # activation: the checkpoint records quick_gelu, the caller asks for gelu
    torch.manual_seed(0)
    CLIPModel(hf_config("quick_gelu")).save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="act"):
        mmfm.load(tmp_path / "hf", act="gelu")
    assert mmfm.load(tmp_path / "hf", act="quick_gelu").config.text.act == "quick_gelu"
    # end id outside the vocabulary
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["text_config"]["eos_token_id"] = 500
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="eot_token_id"):
        mmfm.load(tmp_path / "hf")
    # a tokenizer whose end token is not the config's
    m, folder = tiny_mmfm(tmp_path)
    (folder / "mmfm-manifest.json").unlink()  # the config is edited by hand below, on purpose
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text"]["eot_token_id"] = 5
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="start/end ids"):
        mmfm.load(folder)
    # shapes: weights of another size
    cfg["text"]["eot_token_id"] = m.config.text.eot_token_id
    cfg["vision"]["width"] = 64
    cfg["vision"]["heads"] = 4
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        mmfm.load(folder)


def test_unsafe_or_broken_checkpoints(tmp_path):
    m, folder = tiny_mmfm(tmp_path)
    # a pickle that would run code when unpickled: refused by weights_only=True
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, bad)
    with pytest.raises(CheckpointError):
        mmfm.load(bad, config=open_clip_cfg(True))
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        mmfm.load(folder)
    with pytest.raises(CheckpointError):
        mmfm.load(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError):
        mmfm.load(tmp_path / "empty")


def test_hybrid_tower_does_not_export_to_references(tmp_path):
    from mmfm.models.clip import CLIP
    from mmfm.train.clip import world_tiny_config

    m = CLIP(world_tiny_config(pool="cls"))  # conv stem
    for fmt in ("hf", "open_clip"):
        with pytest.raises(CheckpointError, match="conv stem"):
            mmfm.save(m, tmp_path / fmt, format=fmt)
    m.save_pretrained(tmp_path / "mmfm")
    again = mmfm.load(tmp_path / "mmfm")
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(again.encode_image(x), m.eval().encode_image(x))  # BatchNorm running stats included
