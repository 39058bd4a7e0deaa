"""SAM: parity with segment-anything (model, predictor, automatic masks) and transformers' SamModel on
tiny random configs, checkpoint round trips, RLE against pycocotools, training pieces, bad prompts, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import torch

import mmfm
from mmfm import weights
from mmfm.errors import InvalidImage, InvalidPrompt
from mmfm.interop.sam import config_from_official, from_official, to_official
from mmfm.models.sam import SAM, SamAutomaticMaskGenerator, SAMConfig, SamPredictor, sam_config

sa = pytest.importorskip("segment_anything")
TINY = dict(image_size=64, patch_size=8, encoder_dim=48, encoder_depth=3, encoder_heads=3, window_size=3,
            global_attn_indexes=(1,), prompt_dim=32, decoder_heads=2, decoder_mlp_dim=40, iou_head_hidden=24)


def reference_sam(seed: int = 0, std: float = 0.2):
    """segment-anything's own classes, tiny, with random weights everywhere (norms and embeddings too)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    ref = Sam(
        image_encoder=ImageEncoderViT(
            depth=3,
            embed_dim=48,
            img_size=64,
            mlp_ratio=4,
            num_heads=3,
            patch_size=8,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(1,),
            window_size=3,
            out_chans=32,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=32, image_embedding_size=(8, 8), input_image_size=(64, 64), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer_dim=32,
            iou_head_depth=3,
            iou_head_hidden_dim=24,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=40, num_heads=2),
        ),
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, std)
    return ref


@pytest.fixture(scope="module")
def pair():
    ref = reference_sam()
    ours = SAM(SAMConfig(**TINY)).eval()
    ours.load_state_dict(from_official(ref.state_dict()))
    return ref, ours


@pytest.fixture(scope="module")
def image():
    return (np.random.RandomState(0).rand(48, 70, 3) * 255).astype(np.uint8)


def test_config_read_off_official_shapes(pair):
    ref, _ = pair
    assert config_from_official(ref.state_dict(), decoder_heads=2) == SAMConfig(**TINY)


def test_model_parity_with_segment_anything(pair):
    ref, ours = pair
    x = torch.randn(2, 3, 64, 64)
    pts = (torch.rand(2, 3, 2) * 64, torch.tensor([[1, 0, -1], [1, 1, 0]]))
    box = torch.tensor([[5.0, 6.0, 40.0, 50.0], [1.0, 2.0, 60.0, 30.0]])
    mask = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        e_ref, e_ours = ref.image_encoder(x), ours.image_encoder(x)
        assert (e_ref - e_ours).abs().max() <= 1e-4
        for kw in (dict(points=pts, boxes=None, masks=None), dict(points=None, boxes=box, masks=None),
                   dict(points=pts, boxes=box, masks=mask), dict(points=None, boxes=None, masks=mask)):
            s_ref, d_ref = ref.prompt_encoder(**kw)
            s_ours, d_ours = ours.prompt_encoder(**kw)
            assert s_ref.shape == s_ours.shape and (s_ref.numel() == 0 or (s_ref - s_ours).abs().max() <= 1e-6)
            assert (d_ref - d_ours).abs().max() <= 1e-6
            for multi in (True, False):
                m_ref, i_ref = ref.mask_decoder(e_ref[:1], ref.prompt_encoder.get_dense_pe(), s_ref, d_ref, multi)
                m_ours, i_ours = ours.mask_decoder(
                    e_ours[:1], ours.prompt_encoder.get_dense_pe(), s_ours, d_ours, multi
                )
                assert m_ours.shape == m_ref.shape == (s_ref.shape[0], 3 if multi else 1, 32, 32)
                assert (m_ref - m_ours).abs().max() <= 1e-4 and (i_ref - i_ours).abs().max() <= 1e-4


def test_predictor_parity_and_mask_feedback(pair, image):
    ref, ours = pair
    rp, op = sa.SamPredictor(ref), SamPredictor(ours)
    rp.set_image(image)
    op.set_image(image)
    assert (rp.features - op.features).abs().max() <= 1e-4
    prompts = [dict(point_coords=np.array([[10, 20], [30, 5]]), point_labels=np.array([1, 0])),
               dict(box=np.array([3, 4, 50, 40])),
               dict(point_coords=np.array([[10, 20]]), point_labels=np.array([1]), box=np.array([3, 4, 50, 40]),
                    multimask_output=False)]
    for kw in prompts:
        a, b = rp.predict(**kw, return_logits=True), op.predict(**kw, return_logits=True)
        assert b[0].shape == a[0].shape and b[0].shape[1:] == image.shape[:2]
        assert all(np.abs(x - y).max() <= 1e-4 for x, y in zip(a, b))
        # the low-res logits go back in as the mask prompt
        a2, b2 = rp.predict(**kw, mask_input=a[2][:1]), op.predict(**kw, mask_input=b[2][:1])
        assert np.array_equal(a2[0], b2[0]) and np.abs(a2[1] - b2[1]).max() <= 1e-4
    # several boxes at once through predict_torch
    boxes = torch.tensor([[3, 4, 50, 40], [10, 10, 60, 45], [0, 0, 20, 20]], dtype=torch.float)
    ra = rp.predict_torch(None, None, rp.transform.apply_boxes_torch(boxes, image.shape[:2]), multimask_output=False)
    ob = op.predict_torch(None, None, op.transform.apply_boxes_torch(boxes, image.shape[:2]), multimask_output=False)
    assert ob[0].shape == (3, 1, 48, 70) and torch.equal(ra[0], ob[0])


@pytest.mark.parametrize("kw", [
    dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0),
    dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=1, output_mode="coco_rle"),
    dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_mask_region_area=40,
         output_mode="uncompressed_rle", points_per_batch=10),
])
def test_automatic_masks_match_segment_anything(pair, image, kw):
    ref, ours = pair
    a = sa.SamAutomaticMaskGenerator(ref, **kw).generate(image)
    b = SamAutomaticMaskGenerator(ours, **kw).generate(image)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert set(x) == set(y)
        seg_equal = (np.array_equal(x["segmentation"], y["segmentation"]) if isinstance(x["segmentation"], np.ndarray)
                     else x["segmentation"] == y["segmentation"])
        assert seg_equal and x["bbox"] == y["bbox"] and x["area"] == y["area"] and x["crop_box"] == y["crop_box"]
        assert x["point_coords"] == y["point_coords"]
        assert (
            abs(x["predicted_iou"] - y["predicted_iou"]) <= 1e-4
            and abs(x["stability_score"] - y["stability_score"]) <= 1e-4
        )


def test_rle_outputs_decode_with_pycocotools(pair, image):
    from pycocotools import mask as mask_utils

    _, ours = pair
    kw = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    binary = SamAutomaticMaskGenerator(ours, **kw).generate(image)
    coco = SamAutomaticMaskGenerator(ours, output_mode="coco_rle", **kw).generate(image)
    unc = SamAutomaticMaskGenerator(ours, output_mode="uncompressed_rle", **kw).generate(image)
    for b, c, u in zip(binary, coco, unc):
        assert np.array_equal(mask_utils.decode({"size": c["segmentation"]["size"],
                                                 "counts": c["segmentation"]["counts"].encode()}), b["segmentation"])
        assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(u["segmentation"], *u["segmentation"]["size"])),
                              b["segmentation"])
        assert (
            mask_utils.area({"size": c["segmentation"]["size"], "counts": c["segmentation"]["counts"].encode()})
            == b["area"]
        )
    json.dumps(coco)  # serialisable as is


def test_transformers_parity_and_round_trip(tmp_path, pair):
    transformers = pytest.importorskip("transformers")
    _, ours = pair
    hf = transformers.SamModel.from_pretrained(mmfm.save(ours, tmp_path / "hf", format="hf")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        e_ours, e_hf = ours.encode_image(x), hf.get_image_embeddings(x)
        assert (e_ours - e_hf).abs().max() <= 1e-4
        pts, labels = torch.rand(1, 2, 3, 2) * 64, torch.tensor([[[1, 0, 1], [1, 1, -1]]])
        out = hf(image_embeddings=e_hf, input_points=pts, input_labels=labels, multimask_output=True)
        low, iou = ours.decode(e_ours, points=(pts[0], labels[0]), multimask_output=True)
        assert (out.pred_masks[0] - low).abs().max() <= 1e-4 and (out.iou_scores[0] - iou).abs().max() <= 1e-4
        box = torch.tensor([[[5.0, 6.0, 40.0, 50.0], [1.0, 2.0, 60.0, 30.0]]])
        out = hf(image_embeddings=e_hf, input_boxes=box, multimask_output=False)
        low, iou = ours.decode(e_ours, boxes=box[0], multimask_output=False)
        assert (out.pred_masks[0] - low).abs().max() <= 1e-4 and (out.iou_scores[0] - iou).abs().max() <= 1e-4
    # HF folder written by transformers -> mmfm.load
    hf.save_pretrained(tmp_path / "hf2")
    back = mmfm.load(tmp_path / "hf2")
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))


def test_official_checkpoint_file_loads(tmp_path, pair):
    ref, ours = pair
    torch.save(ref.state_dict(), tmp_path / "sam_tiny.pth")  # the release's layout: a bare state dict
    loaded = mmfm.load(tmp_path / "sam_tiny.pth", config=SAMConfig(**TINY))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ours.state_dict().values()))
    assert set(to_official(ours.state_dict())) == set(ref.state_dict())
    again = mmfm.load(ours.save_pretrained(tmp_path / "own"))
    assert isinstance(again, SAM) and again.config == ours.config


def test_registry_matches_the_published_builders():
    for name in ("vit_b", "vit_l", "vit_h"):
        with torch.device("meta"):
            ref = sa.sam_model_registry[name]()
            ours = SAM(sam_config(name))
        assert {k: tuple(v.shape) for k, v in to_official(ours.state_dict()).items()} == \
               {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def test_bad_prompts_are_clear(pair, image):
    _, ours = pair
    p = SamPredictor(ours)
    with pytest.raises(InvalidPrompt, match="set_image"):
        p.predict(point_coords=[[1, 1]], point_labels=[1])
    p.set_image(image)
    cases = [
        (dict(point_coords=[[500, 10]], point_labels=[1]), "outside"),
        (dict(point_coords=[[-1, 10]], point_labels=[1]), "outside"),
        (dict(point_coords=[[float("nan"), 10]], point_labels=[1]), "NaN"),
        (dict(box=[40, 30, 10, 5]), "inverted"),
        (dict(point_coords=[[1, 1]], point_labels=[2]), "labels"),
        (dict(point_coords=[[1, 1], [2, 2]], point_labels=[1]), "one label per point"),
        (dict(point_coords=[[1, 1]]), "point_labels"),
        (dict(box=[1, 2, 3]), "4 numbers"),
        (dict(point_coords=[[1, 1]], point_labels=[1], mask_input=np.zeros((1, 10, 10))), "mask_input"),
        (dict(point_coords="here", point_labels=[1]), "numeric"),
    ]
    for kw, msg in cases:
        with pytest.raises(InvalidPrompt, match=msg):
            p.predict(**kw)
    with pytest.raises(InvalidImage):
        p.set_image(np.zeros((10, 10), dtype=np.uint8))


def test_training_step_learns_and_interactive_rounds_run():
    from mmfm.train.sam import SAMTrainModule, WorldSAMData

    torch.manual_seed(0)
    data = WorldSAMData.build(60, 64, 8, 2, 0.5, progress=False)
    module = SAMTrainModule(SAM("world-tiny"), rounds=3, mask_only_rounds=1)
    opt = torch.optim.AdamW(module.parameters(), lr=2e-3)
    batch = data.batch(0)
    assert batch["gt"].shape == (16, 64, 64) and batch["images"].shape == (8, 64, 64, 3)
    # every first point lies inside its object, every noisy box stays in the image
    xy = batch["point"].long()
    assert batch["gt"][torch.arange(16), xy[:, 1], xy[:, 0]].all()
    assert (batch["box"] >= 0).all() and (batch["box"] <= 63).all()
    losses = []
    for _ in range(25):
        loss, metrics = module(batch)
        loss = loss.float()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(metrics) >= {"point_iou_round1", "box_iou_round1", "point_iou_last"}
    assert losses[-1] < 0.6 * losses[0]


def test_center_point_is_deep_inside():
    from mmfm.eval.sam_world import center_point

    m = torch.zeros(20, 30, dtype=torch.bool)
    m[4:15, 5:26] = True
    x, y = center_point(m)
    assert 13 <= x <= 17 and 8 <= y <= 10 and m[int(y), int(x)]


def test_cli_segment_points_box_auto(tmp_path, pair, image):
    from PIL import Image

    _, ours = pair
    folder = ours.save_pretrained(tmp_path / "sam")
    Image.fromarray(image).save(tmp_path / "img.png")
    run = lambda *a: subprocess.run([sys.executable, "-m", "mmfm.cli.main", "segment", str(tmp_path / "img.png"),  # noqa: E731
                                     "--model", str(folder), *a], capture_output=True, text=True, timeout=300)
    r = run("--point", "10,20", "--point", "30,5:0", "-o", str(tmp_path / "p.png"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.png").is_file() and (tmp_path / "p_mask0.png").is_file()
    assert len(json.loads((tmp_path / "p.json").read_text())) == 3
    r = run("--box", "3,4,50,40", "--single", "-o", str(tmp_path / "b.png"))
    assert r.returncode == 0 and len(json.loads((tmp_path / "b.json").read_text())) == 1
    r = run("--auto", "--points-per-side", "4", "-o", str(tmp_path / "a.png"))
    assert r.returncode == 0 and isinstance(json.loads((tmp_path / "a.json").read_text()), list)
    bad = run("--point", "500,20")
    assert bad.returncode == 2 and "outside" in bad.stderr
    bad = run("--box", "40,30,10,5")
    assert bad.returncode == 2 and "inverted" in bad.stderr
    bad = run("--point", "1,2:7")
    assert bad.returncode == 2 and "labels" in bad.stderr


def test_text_prompt_pipeline_runs_with_a_world_clip(pair, image):
    from mmfm.models.clip import CLIP
    from mmfm.models.sam.text import segment
    from mmfm.text.tokenizer import CLIPTokenizer
    from mmfm.train.clip import world_tiny_config

    _, ours = pair
    clip = CLIP(world_tiny_config()).eval()
    clip.tokenizer = CLIPTokenizer.world(context_length=clip.config.text.context_length)
    res = segment(ours, image, "red circle", clip=clip, amg=dict(points_per_side=6, pred_iou_thresh=0.0,
                                                                  stability_score_thresh=0.0))
    assert res["mask"].shape == image.shape[:2] and res["mask"].dtype == bool
    scores = [c["score"] for c in res["candidates"]]
    assert scores == sorted(scores, reverse=True) and abs(scores[0] - res["score"]) < 1e-4
    x0, y0, x1, y1 = res["box"]
    assert 0 <= x0 <= x1 <= image.shape[1] and 0 <= y0 <= y1 <= image.shape[0]
    with pytest.raises(InvalidPrompt, match="empty"):
        segment(ours, image, "  ", clip=clip)


def test_cli_eval_sam_with_text_prompts(tmp_path):
    """`mmfm eval sam --clip`: the world evaluation and the text-prompt score (an untrained SAM, so only
    the report's shape and ranges are checked)."""
    torch.manual_seed(0)
    folder = SAM(sam_config("world-tiny")).save_pretrained(tmp_path / "sam")
    res = subprocess.run([sys.executable, "-m", "mmfm.cli.main", "eval", "sam", "--model", str(folder), "--n", "3",
                          "--amg-images", "1", "--clip", str(weights.path("clip-world-tiny")), "--text-n", "3",
                          "--out", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert 0 <= r["miou_single"] <= 1 and r["text_scenes"] >= 1 and 0 <= r["text_miou"] <= 1
    assert "text prompts: mIoU" in res.stdout
