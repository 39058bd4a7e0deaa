"""COCO instances (polygons, RLE, uncompressed RLE) for SAM, read with pycocotools as COCO's own
tools read them, and the training batches of SAM's interactive simulation on them.

An annotation is unusable (counted, listed, skipped) when its image file is missing, a polygon has
fewer than 3 points or points outside the image, an RLE's size is not the image's, or its mask is
empty; an image whose file does not decode, or whose size is not the one the JSON records, is
skipped with its annotations. Images are resized as SAM's predictor does (longest side to the model's
input size, padded bottom-right), masks with them."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmfm.data.files import DataReport, ImageCache, image_root, positions, resolve_image, take
from mmfm.errors import DataError
from mmfm.vision.masks import masks_to_boxes

SLACK = 1.0  # pixels a polygon point may lie outside the image (COCO's own polygons touch the border)


@dataclass
class CocoImage:
    path: Path
    width: int
    height: int
    anns: list[dict]  # usable annotations


def _ann_problem(ann: dict, w: int, h: int) -> str | None:
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        if not seg:
            return "empty segmentation"
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                return "a polygon with fewer than 3 points"
            try:
                xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
            except (TypeError, ValueError):
                return "a polygon with non-numeric coordinates"
            if not np.isfinite(xy).all() or (xy < -SLACK).any() or (xy[:, 0] > w + SLACK).any() \
                    or (xy[:, 1] > h + SLACK).any():
                return "a polygon outside the image"
        return None
    if isinstance(seg, dict):
        if list(seg.get("size", [])) != [h, w]:
            return f"an RLE of size {seg.get('size')} on a {h}x{w} image"
        if "counts" not in seg:
            return "an RLE without counts"
        return None
    return "no segmentation"


def read_coco_instances(path, images=None, max_bad: float = 0.1) -> tuple[list[CocoImage], DataReport]:
    """COCO instances JSON -> images with their usable annotations (crowd regions included: they are
    masks too; SAM's data has no classes)."""
    from pycocotools.coco import COCO

    path = Path(path)
    root = image_root(path, images)
    report = DataReport(str(path), max_bad)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise DataError(f"{path}: not a COCO instances file ({type(e).__name__}: {e})") from None
    out = []
    for img_id in sorted(coco.imgs):
        info = coco.imgs[img_id]
        anns = coco.imgToAnns.get(img_id, [])
        file = resolve_image(root, info.get("file_name"))
        w, h = info.get("width"), info.get("height")
        if file is None or not isinstance(w, int) or not isinstance(h, int) or w < 1 or h < 1:
            report.seen(len(anns))
            for a in anns:
                report.skip("missing image file" if file is None else "no image width / height",
                            f"annotation {a.get('id')} ({info.get('file_name')!r})")
            continue
        good = []
        for a in anns:
            report.seen()
            why = _ann_problem(a, w, h)
            if why is None and not coco.annToMask(a).any():
                why = "an empty mask"
            if why:
                report.skip(why, f"annotation {a.get('id')}")
            else:
                good.append(a)
        if good:
            out.append(CocoImage(file, w, h, good))
    report.check()
    return out, report


def coco_masks(image: CocoImage) -> np.ndarray:
    """(K, H, W) bool masks of the image's annotations, decoded by pycocotools."""
    from pycocotools import mask as mask_utils

    out = []
    for a in image.anns:
        seg = a["segmentation"]
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, image.height, image.width))
        elif isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, image.height, image.width)
        else:
            rle = seg
        out.append(mask_utils.decode(rle).astype(bool))
    return np.stack(out)


def resize_longest(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """(C, H, W) -> longest side `size` (SAM's ResizeLongestSide rounding), not padded."""
    h, w = x.shape[-2:]
    s = size / max(h, w)
    nh, nw = int(h * s + 0.5), int(w * s + 0.5)
    if mode == "nearest":
        return F.interpolate(x[None].float(), (nh, nw), mode="nearest")[0]
    return F.interpolate(x[None].float(), (nh, nw), mode=mode, align_corners=False, antialias=True)[0]


def first_prompts(gt: torch.Tensor, boxes: torch.Tensor, g: torch.Generator, box_fraction: float) -> dict:
    """The first prompt of each object of SAM's interactive simulation: a pixel drawn uniformly from its
    mask, and its box with noise (10% of the side, at most 3 px), one or the other (`use_box`)."""
    size = gt.shape[-1]
    idx = torch.multinomial(gt.flatten(1).float(), 1, generator=g).squeeze(1)
    point = torch.stack([idx % size, idx // size], 1).float()
    box = boxes.clone().float()
    side = torch.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], 1).repeat(1, 2) + 1
    noise = torch.randn(box.shape, generator=g) * 0.1 * side
    box = (box + noise.clamp(-3, 3)).clamp(0, size - 1)
    box = torch.stack([torch.minimum(box[:, 0], box[:, 2]), torch.minimum(box[:, 1], box[:, 3]),
                       torch.maximum(box[:, 0], box[:, 2]), torch.maximum(box[:, 1], box[:, 3])], 1)
    use_box = torch.rand(len(gt), generator=g) < box_fraction
    return {"point": point, "box": box, "use_box": use_box}


@dataclass
class CocoSAMBatches:
    """batch(step, ...) -> SAM's training batch {pixels, gt, point, box, use_box, k}: `k` objects per
    image (drawn among those with at least `min_area` pixels at the model's size), images normalised and
    padded by `normalize` ((3, h, w) 0..255 -> (3, S, S)). A pure function of the step."""

    images: list[CocoImage]
    report: DataReport
    size: int
    normalize: object
    batch_size: int
    k: int = 2
    box_fraction: float = 0.5
    min_area: int = 12
    seed: int = 0
    cache: ImageCache = field(init=False)

    def __post_init__(self):
        self.cache = ImageCache(self.report)
        self.bad: set[int] = set()

    def item(self, i: int):
        if i in self.bad:
            return None
        im = self.images[i]
        pic = self.cache.load(im.path)
        if pic is not None and pic.size != (im.width, im.height):
            self.report.skip(f"image is {pic.size[0]}x{pic.size[1]}, the JSON says {im.width}x{im.height}",
                             str(im.path))
            self.report.check()
            pic = None
        if pic is None:
            self.bad.add(i)
            return None
        x = resize_longest(torch.from_numpy(np.array(pic)).permute(2, 0, 1), self.size)
        m = resize_longest(torch.from_numpy(coco_masks(im)), self.size, "nearest") > 0.5
        pad = (0, self.size - x.shape[-1], 0, self.size - x.shape[-2])
        m = F.pad(m, pad)
        keep = m.flatten(1).sum(1) >= self.min_area
        if not keep.any():
            self.bad.add(i)
            self.report.skip(f"every object under {self.min_area} pixels at the model's size", str(im.path))
            self.report.check()
            return None
        return self.normalize(x), m[keep]

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1, accum: int = 1) -> dict:
        idx = positions(len(self.images), self.batch_size, step, self.seed, micro, rank, world, accum)
        got = take(idx, len(self.images), self.item)
        rng = np.random.default_rng([self.seed, step, micro, rank])
        gts = []
        for _, m in got:
            pick = rng.integers(len(m), size=self.k)
            gts.append(m[torch.from_numpy(pick)])
        gt = torch.cat(gts)
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return {"pixels": torch.stack([x for x, _ in got]), "gt": gt, "k": self.k,
                **first_prompts(gt, masks_to_boxes(gt), g, self.box_fraction)}


def write_coco_instances(path, images: list[dict], annotations: list[dict], categories=None) -> Path:
    """A COCO instances JSON (for exporting world scenes or tests)."""
    import json

    obj = {"images": images, "annotations": annotations,
           "categories": categories or [{"id": 1, "name": "object"}]}
    Path(path).write_text(json.dumps(obj))
    return Path(path)


__all__ = ["CocoImage", "CocoSAMBatches", "read_coco_instances", "coco_masks", "first_prompts", "resize_longest",
           "write_coco_instances"]
