"""Images in, tensors out: safe loading of every defect, preprocessing equal to the references, and
mask utilities equal to pycocotools."""

import io
import struct
import time
import zlib

import numpy as np
import pycocotools.mask as cocomask
import pytest
import torch
from PIL import Image

from mmfm.errors import InvalidImage
from mmfm.vision.io import load_image
from mmfm.vision.masks import (
    batched_nms,
    box_iou,
    coco_rle,
    mask_iou,
    masks_to_boxes,
    nms,
    rle_area,
    rle_decode,
    rle_encode,
)
from mmfm.vision.transforms import CLIPPreprocess, SAMPreprocess, center_crop, sam_resize_shape

RNG = np.random.default_rng(0)


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny IDAT: what a decompression bomb looks like
    before anyone decodes it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "RGB", "1"])
def test_every_mode_becomes_rgb(mode):
    img = Image.fromarray(RNG.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode)
    out = load_image(png_bytes(img) if mode != "CMYK" else _jpeg(img))
    assert out.mode == "RGB" and out.size == (30, 20)


def _jpeg(img, **kw):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def test_palette_with_transparency_and_16_bit():
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.info["transparency"] = 0
    assert load_image(png_bytes(p, transparency=0)).getpixel((0, 0)) == (255, 0, 0)
    arr16 = np.full((6, 7), 65535, dtype=np.uint16)
    arr16[0, 0] = 0
    img16 = Image.fromarray(arr16)
    assert img16.mode.startswith("I;16")
    out = np.asarray(load_image(png_bytes(img16)))
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]  # rescaled, not clipped
    mid = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))
    assert np.asarray(load_image(mid))[0, 0, 0] == 128
    f = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))
    assert np.asarray(load_image(f))[0, 0, 0] in (127, 128)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = load_image(_jpeg(img, exif=exif, quality=95))
    assert out.size == (20, 40)
    assert out.getpixel((10, 2))[2] > 200  # blue is now at the top


def test_defects_give_invalid_image(tmp_path):
    good = png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    jpeg = _jpeg(Image.fromarray(RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    cases = {
        "empty": b"",
        "text": b"hello, I am not an image",
        "truncated png": good[: len(good) // 2],
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "corrupt png": good[:40] + bytes(200) + good[240:],
        "html": b"<html><body>404</body></html>",
    }
    for name, data in cases.items():
        with pytest.raises(InvalidImage):
            load_image(data)
        p = tmp_path / f"{name.replace(' ', '_')}.png"
        p.write_bytes(data)
        with pytest.raises(InvalidImage) as e:
            load_image(p)
        assert str(p) in str(e.value)
    with pytest.raises(InvalidImage, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InvalidImage, match="no such file"):
        load_image(tmp_path)  # a directory
    with pytest.raises(InvalidImage):
        load_image(12345)
    with pytest.raises(InvalidImage):
        load_image(np.zeros((4, 4, 5)))
    with pytest.raises(InvalidImage):
        load_image(np.full((4, 4, 3), np.nan))
    with pytest.raises(InvalidImage):
        load_image(np.zeros((0, 4, 3), dtype=np.uint8))


def test_huge_header_is_refused_before_decoding():
    data = png_header_only(60_000, 60_000)
    assert struct.unpack(">II", data[16:24]) == (60_000, 60_000)
    t = time.perf_counter()
    with pytest.raises(InvalidImage, match="(?i)pixel|decod"):
        load_image(data)
    assert time.perf_counter() - t < 0.5
    # just over our own limit (and under PIL's hard one): our check, with our message
    with pytest.raises(InvalidImage, match="over the limit"):
        load_image(png_header_only(10_000, 9_000))
    with pytest.raises(InvalidImage, match="over the limit"):
        load_image(png_header_only(100, 100), max_pixels=5_000)


def test_arrays_and_tensors():
    arr = RNG.integers(0, 255, (5, 6, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(load_image(arr)), arr)
    assert np.array_equal(np.asarray(load_image(torch.from_numpy(arr).permute(2, 0, 1))), arr)
    assert np.array_equal(np.asarray(load_image(arr / 255.0)), arr)
    assert load_image(arr[..., 0]).mode == "RGB"


# --------------------------------------------------------------------------------------------- preprocessing
SIZES = [(300, 400), (301, 400), (224, 224), (500, 333), (100, 150), (401, 300), (1000, 227), (50, 60)]


def test_clip_preprocess_equals_transformers():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    ref = CLIPImageProcessorPil()
    ours = CLIPPreprocess(224, crop_rounding="floor")
    for h, w in SIZES:
        im = Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8))
        want = torch.from_numpy(ref(im, return_tensors="np")["pixel_values"][0])
        assert (ours(im) - want).abs().max() < 1e-5, (h, w)


def test_clip_center_crop_follows_torchvision_rounding():
    # torchvision: top = int(round((h - crop) / 2)); (299 - 224) / 2 = 37.5 -> 38 (round half to even)
    im = Image.fromarray(np.arange(299, dtype=np.uint8)[:, None, None].repeat(224, 1).repeat(3, 2))
    assert np.asarray(center_crop(im, 224))[0, 0, 0] == 38
    assert np.asarray(center_crop(im, 224, rounding="floor"))[0, 0, 0] == 37
    small = center_crop(Image.new("RGB", (10, 10), (255, 255, 255)), 14)
    assert small.size == (14, 14) and small.getpixel((0, 0)) == (0, 0, 0)


def test_sam_preprocess():
    assert sam_resize_shape(480, 640, 1024) == (768, 1024)
    assert sam_resize_shape(333, 500, 1024) == (682, 1024)  # 681.98 rounds half up
    im = Image.fromarray(RNG.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    x, orig, resized = SAMPreprocess(128)(im)
    assert x.shape == (3, 128, 128) and orig == (48, 64) and resized == (96, 128)
    assert (x[:, 96:] == 0).all()
    manual = np.asarray(im.resize((128, 96), Image.BILINEAR), dtype=np.float32)
    manual = (manual - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    assert np.allclose(x[:, :96].permute(1, 2, 0).numpy(), manual, atol=1e-4)
    pts = SAMPreprocess(128).apply_coords(torch.tensor([[64.0, 48.0]]), (48, 64))
    assert pts.tolist() == [[128.0, 96.0]]


# --------------------------------------------------------------------------------------------- masks
def test_rle_equals_pycocotools():
    for _ in range(300):
        h, w = RNG.integers(1, 50, 2)
        m = RNG.random((h, w)) < RNG.random()
        ref = cocomask.encode(np.asfortranarray(m.astype(np.uint8)))
        ours = coco_rle(m)
        assert ours["counts"] == ref["counts"].decode() and ours["size"] == list(ref["size"])
        assert np.array_equal(rle_decode(ours), m)
        assert np.array_equal(rle_decode(rle_encode(m)), m)
        assert rle_area(ours) == cocomask.area(ref) == m.sum()
        # uncompressed RLE as SAM writes it, read by pycocotools
        unc = cocomask.frPyObjects(rle_encode(m), h, w)
        assert np.array_equal(cocomask.decode(unc).astype(bool), m)
        assert np.array_equal(rle_decode(ref), m)
    with pytest.raises(ValueError):
        rle_decode({"size": [2, 2], "counts": [1, 1]})


def test_boxes_and_ious():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 9, 11] = True
    assert masks_to_boxes(masks).tolist() == [[3, 2, 8, 4], [11, 9, 11, 9], [0, 0, 0, 0]]
    assert masks_to_boxes(masks[None]).shape == (1, 3, 4)
    a = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15]])
    iou = box_iou(a, a)
    assert torch.allclose(iou, torch.tensor([[1.0, 25 / 175], [25 / 175, 1.0]]))
    mi = mask_iou(masks, masks)
    assert torch.allclose(mi.diagonal(), torch.tensor([1.0, 1.0, 0.0]))


def reference_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(box_iou(boxes[i : i + 1], boxes[j : j + 1]).item() <= thr for j in keep):
            keep.append(i)
    return keep


def test_nms_matches_greedy_reference():
    for _ in range(30):
        n = int(RNG.integers(1, 60))
        xy = torch.from_numpy(RNG.uniform(0, 50, (n, 2))).float()
        wh = torch.from_numpy(RNG.uniform(2, 30, (n, 2))).float()
        boxes = torch.cat([xy, xy + wh], 1)
        scores = torch.from_numpy(RNG.random(n)).float()
        thr = float(RNG.uniform(0.2, 0.8))
        assert nms(boxes, scores, thr).tolist() == reference_nms(boxes, scores, thr)
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    assert batched_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), 0.5).tolist() == [0]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
