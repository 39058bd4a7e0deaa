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


def test_cli_exports_the_shipped_clip_and_sam_and_refuses_other_models(tmp_path):
    from mmfm.weights import path

    res = subprocess.run([sys.executable, "-m", "mmfm.cli.main", "export", "onnx", "--model",
                          str(path("clip-world-tiny")), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "x" / "image.onnx").is_file() and (tmp_path / "x" / "text.onnx").is_file()
    assert (tmp_path / "x" / "vocab.json").is_file() and (tmp_path / "x" / "merges.txt").is_file()
    res = subprocess.run([sys.executable, "-m", "mmfm.cli.main", "export", "onnx", "--model",
                          str(path("sam-world-tiny")), "--out", str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "decoder: " in res.stdout and "orig_im_size" in res.stdout
    info = json.loads((tmp_path / "s" / "onnx.json").read_text())
    made = [n for n in ("encoder", "decoder", "sam") if (tmp_path / "s" / f"{n}.onnx").is_file()]
    assert made == list(info["graphs"])
    bad = subprocess.run([sys.executable, "-m", "mmfm.cli.main", "export", "onnx", "--model",
                          str(path("llava-world-tiny")), "--out", str(tmp_path / "y")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "CLIP and CoCa" in bad.stderr


def tiny_sam_pair():
    """segment-anything's tiny random SAM and mmfm's copy of it (tests/test_sam.py's pair)."""
    pytest.importorskip("segment_anything")
    from mmfm.interop.sam import from_official
    from mmfm.models.sam import SAM, SAMConfig
    from tests.test_sam import TINY, reference_sam

    ref = reference_sam()
    ours = SAM(SAMConfig(**TINY)).eval()
    ours.load_state_dict(from_official(ref.state_dict()))
    return ref, ours


@pytest.fixture(scope="module")
def sam_export(tmp_path_factory):
    """The tiny pair and its export (all four masks), shared: an export takes ~12 s here."""
    ref, ours = tiny_sam_pair()
    out = tmp_path_factory.mktemp("sam_onnx")
    return ref, ours, out, export_onnx(ours, out)


@pytest.mark.parametrize("single_mask", [False, True])
def test_sam_decoder_is_segment_anythings_onnx_decoder(tmp_path, sam_export, single_mask):
    """decoder.onnx takes segment-anything's ONNX inputs by name and gives what its SamOnnxModel gives on the
    reference's own weights: clicks with the padding point, clicks and a box, a previous mask, any size."""
    from segment_anything.utils.onnx import SamOnnxModel

    from mmfm.interop.onnx_export import DECODER_INPUTS, DECODER_OUTPUTS

    ref, ours, out, info = sam_export
    if single_mask:
        out, info = tmp_path, export_onnx(ours, tmp_path, single_mask=True)
    assert set(info["graphs"]) == {"encoder", "decoder", "sam"}
    assert all(g["max_abs_diff"] <= TOLERANCE for g in info["graphs"].values())
    sess = ort.InferenceSession(str(out / "decoder.onnx"))
    assert [i.name for i in sess.get_inputs()] == DECODER_INPUTS
    assert [o.name for o in sess.get_outputs()] == DECODER_OUTPUTS
    reference = SamOnnxModel(ref, return_single_mask=single_mask)
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 32, 8, 8, generator=g)
    cases = [([[20.0, 30.0], [0.0, 0.0]], [1.0, -1.0], 0.0, (480.0, 640.0)),
             ([[5.0, 6.0], [40.0, 50.0], [10.0, 12.0], [60.0, 33.0], [44.0, 2.0]], [2.0, 3.0, 1.0, 0.0, 1.0], 1.0,
              (97.0, 31.0)),
             ([[63.0, 63.0]], [0.0], 1.0, (64.0, 64.0))]
    for coords, labels, has_mask, size in cases:
        args = (emb, torch.tensor([coords]), torch.tensor([labels]), torch.randn(1, 1, 32, 32, generator=g),
                torch.tensor([has_mask]), torch.tensor(size))
        got = sess.run(None, {n: a.numpy() for n, a in zip(DECODER_INPUTS, args)})
        with torch.no_grad():
            want = reference(*args)
        for a, b in zip(got, want):
            assert a.shape == tuple(b.shape)
            assert np.abs(a - b.numpy()).max() <= TOLERANCE
        assert got[0].shape[-2:] == tuple(int(v) for v in size) and got[0].shape[1] == (1 if single_mask else 4)


def test_whole_sam_runs_a_click_end_to_end_in_onnx_runtime(sam_export):
    """sam.onnx: an image resized as SamPredictor resizes it and one click in, masks at the image's own size
    out, equal to SamPredictor's multimask logits and scores (mask tokens 1..3 of the four)."""
    from mmfm.models.sam import SamPredictor
    from mmfm.models.sam.predictor import ResizeLongestSide

    _, ours, out, _ = sam_export
    image = (np.random.RandomState(0).rand(48, 70, 3) * 255).astype(np.uint8)
    resize = ResizeLongestSide(64)
    pixels = resize.apply_image(image).transpose(2, 0, 1)[None].astype(np.float32)
    click = resize.apply_coords(np.array([[30.0, 20.0], [0.0, 0.0]]), image.shape[:2])
    coords = np.concatenate([click[:1], [[0.0, 0.0]]])[None].astype(np.float32)
    feeds = {"image": pixels, "point_coords": coords, "point_labels": np.array([[1.0, -1.0]], np.float32),
             "mask_input": np.zeros((1, 1, 32, 32), np.float32), "has_mask_input": np.zeros(1, np.float32),
             "orig_im_size": np.array(image.shape[:2], np.float32)}
    masks, scores, low = ort.InferenceSession(str(out / "sam.onnx")).run(None, feeds)
    predictor = SamPredictor(ours)
    predictor.set_image(image)
    want_masks, want_scores, want_low = predictor.predict(point_coords=[[30.0, 20.0]], point_labels=[1],
                                                          return_logits=True)
    assert masks.shape == (1, 4, 48, 70)
    assert np.abs(masks[0, 1:] - want_masks).max() <= TOLERANCE
    assert np.abs(scores[0, 1:] - want_scores).max() <= TOLERANCE
    assert np.abs(low[0, 1:] - want_low).max() <= TOLERANCE
    assert ((masks[0, 1:] > 0) == (want_masks > 0)).all()
