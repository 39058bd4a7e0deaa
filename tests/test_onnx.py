"""ONNX export: CLIP's towers (conv stem + attention pooling, which transformers cannot express, and the
plain ViT with a class token) and CoCa's image tower run in ONNX Runtime within 1e-4 of mmfm, at a
batch size the export never saw; the CLI writes a folder a user can run without mmfm."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmfm.models.clip import CLIP, CLIPConfig
from mmfm.models.coca import CoCa

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from mmfm.interop.onnx_export import TOLERANCE, export_onnx  # noqa: E402

TEXT = dict(vocab_size=64, context_length=8, width=32, layers=1, heads=2, sot_token_id=1, eot_token_id=2,
            pad_token_id=0)


def tiny_clip(stem: str, pool: str) -> CLIP:
    torch.manual_seed(0)
    vision = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, stem=stem, pool=pool, attn_pool_heads=2)
    return CLIP(CLIPConfig(embed_dim=16, vision=vision, text=TEXT)).eval()


@pytest.mark.parametrize("stem,pool", [("conv", "attn"), ("patch", "cls")])
def test_clip_towers_match_in_onnx_runtime(tmp_path, stem, pool):
    model = tiny_clip(stem, pool)
    info = export_onnx(model, tmp_path)
    assert set(info["graphs"]) == {"image", "text"}
    assert all(g["max_abs_diff"] <= TOLERANCE for g in info["graphs"].values())
    # a user's side: only onnxruntime, five images, three captions; zero-shot as mmfm computes it
    pixels = torch.randn(5, 3, 32, 32)
    ids = torch.tensor([[1, 5, 9, 2, 0, 0, 0, 0], [1, 7, 2, 0, 0, 0, 0, 0], [1, 3, 4, 6, 8, 10, 12, 2]])
    img = ort.InferenceSession(str(tmp_path / "image.onnx")).run(None, {"pixels": pixels.numpy()})[0]
    txt = ort.InferenceSession(str(tmp_path / "text.onnx")).run(None, {"input_ids": ids.numpy()})[0]
    with torch.no_grad():
        assert np.abs(img - model.encode_image(pixels).numpy()).max() <= TOLERANCE
        assert np.abs(txt - model.encode_text(ids).numpy()).max() <= TOLERANCE
        want = model(pixels, ids).logits_per_image.argmax(-1).numpy()
    norm = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    assert np.array_equal((norm(img) @ norm(txt).T).argmax(-1), want)
    assert json.loads((tmp_path / "onnx.json").read_text())["image_size"] == 32


def test_coca_image_tower_matches_in_onnx_runtime(tmp_path):
    from mmfm.train.coca import preset

    torch.manual_seed(0)
    info = export_onnx(CoCa(preset("world-tiny")[0]).eval(), tmp_path)  # conv stem, attentional pooler
    assert list(info["graphs"]) == ["image"] and info["graphs"]["image"]["max_abs_diff"] <= TOLERANCE


def test_cli_exports_the_shipped_clip_and_refuses_other_models(tmp_path):
    from mmfm.weights import path

    res = subprocess.run([sys.executable, "-m", "mmfm.cli.main", "export", "onnx", "--model",
                          str(path("clip-world-tiny")), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "x" / "image.onnx").is_file() and (tmp_path / "x" / "text.onnx").is_file()
    assert (tmp_path / "x" / "vocab.json").is_file() and (tmp_path / "x" / "merges.txt").is_file()
    bad = subprocess.run([sys.executable, "-m", "mmfm.cli.main", "export", "onnx", "--model",
                          str(path("sam-world-tiny")), "--out", str(tmp_path / "y")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "CLIP and CoCa" in bad.stderr
