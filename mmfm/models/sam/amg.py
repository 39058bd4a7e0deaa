"""Automatic mask generation (segment-anything's SamAutomaticMaskGenerator): prompt SAM with a grid
of points over the image (and over overlapping crops), keep masks that SAM itself rates well
(predicted IoU) and that are stable under a change of threshold, de-duplicate with box NMS inside
each crop and across crops, and optionally remove small holes and islands.

Records have the reference's fields: segmentation (binary_mask | uncompressed_rle | coco_rle), area,
bbox (XYWH), predicted_iou, point_coords, stability_score, crop_box (XYWH).
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import torch

from mmfm.errors import ConfigError, DependencyError
from mmfm.models.sam.predictor import SamPredictor
from mmfm.vision.io import load_image
from mmfm.vision.masks import batched_nms, coco_rle, masks_to_boxes, rle_decode


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n^2, 2) points in [0, 1]^2 at cell centres, x fastest."""
    side = np.linspace(1 / (2 * n_per_side), 1 - 1 / (2 * n_per_side), n_per_side)
    return np.stack([np.tile(side[None, :], (n_per_side, 1)), np.tile(side[:, None], (1, n_per_side))], -1).reshape(
        -1, 2
    )


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    return [build_point_grid(int(n_per_side / scale_per_layer**i)) for i in range(n_layers + 1)]


def generate_crop_boxes(im_size: tuple[int, int], n_layers: int, overlap_ratio: float):
    """The whole image, then 2^k x 2^k overlapping crops per layer k: (boxes XYXY, layer index)."""
    im_h, im_w = im_size
    short = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]

    def crop_len(orig, n, overlap):
        return int(math.ceil((overlap * (n - 1) + orig) / n))

    for i in range(n_layers):
        n = 2 ** (i + 1)
        overlap = int(overlap_ratio * short * (2 / n))
        cw, ch = crop_len(im_w, n, overlap), crop_len(im_h, n, overlap)
        for x0, y0 in product([int((cw - overlap) * j) for j in range(n)], [int((ch - overlap) * j) for j in range(n)]):
            boxes.append([x0, y0, min(x0 + cw, im_w), min(y0 + ch, im_h)])
            layers.append(i + 1)
    return boxes, layers


def calculate_stability_score(masks: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU of the mask thresholded at threshold + offset with the one at threshold - offset."""
    inter = (masks > threshold + offset).sum((-1, -2), dtype=torch.int32)
    union = (masks > threshold - offset).sum((-1, -2), dtype=torch.int32)
    return inter / union


def is_box_near_crop_edge(boxes: torch.Tensor, crop_box, orig_box, atol: float = 20.0) -> torch.Tensor:
    """Boxes touching a crop's edge that is not the image's edge (the object continues outside the crop)."""
    crop = torch.as_tensor(crop_box, dtype=torch.float)
    orig = torch.as_tensor(orig_box, dtype=torch.float)
    boxes = (boxes + torch.tensor([crop_box[0], crop_box[1], crop_box[0], crop_box[1]])).float()
    near_crop = torch.isclose(boxes, crop[None], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig[None], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(1)


def mask_to_rle(masks: torch.Tensor) -> list[dict]:
    """(B, H, W) bool -> uncompressed RLEs (column-major, counts start with zeros), batched."""
    b, h, w = masks.shape
    flat = masks.permute(0, 2, 1).flatten(1)
    change = (flat[:, 1:] ^ flat[:, :-1]).nonzero()
    out = []
    for i in range(b):
        idx = change[change[:, 0] == i, 1]
        bounds = torch.cat([torch.tensor([0]), idx + 1, torch.tensor([h * w])])
        counts = [] if not bool(flat[i, 0]) else [0]
        counts.extend((bounds[1:] - bounds[:-1]).tolist())
        out.append({"size": [h, w], "counts": counts})
    return out


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (mode 'holes') or drop islands ('islands') smaller than area_thresh (8-connectivity)."""
    label = _connected_components()
    holes = mode == "holes"
    regions, n = label((holes ^ mask).astype(np.uint8))
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0] + small
    if not holes:
        fill = [i for i in range(n + 1) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


def _connected_components():
    try:
        import cv2

        def label(m):
            n, regions = cv2.connectedComponents(m, connectivity=8)
            return regions, n - 1
        return label
    except ImportError:
        pass
    try:
        from scipy import ndimage

        def label(m):
            regions, n = ndimage.label(m, structure=np.ones((3, 3)))
            return regions, n
        return label
    except ImportError:
        raise DependencyError(
            "min_mask_region_area > 0 needs OpenCV or SciPy: pip install 'opencv-python-headless<5'"
        ) from None


def _xyxy_to_xywh(b) -> list:
    b = [float(v) if not float(v).is_integer() else int(v) for v in b]
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


# 256 x 256 = 65,536 prompts already take minutes on a CPU; 3000 per side would be 9 million
MAX_POINTS_PER_SIDE = 256

class SamAutomaticMaskGenerator:
    def __init__(self, model, points_per_side: int | None = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, point_grids: list[np.ndarray] | None = None,
                 min_mask_region_area: int = 0, output_mode: str = "binary_mask"):
        if (points_per_side is None) == (point_grids is None):
            raise ConfigError("give exactly one of points_per_side or point_grids")
        if points_per_side is not None and not 1 <= points_per_side <= MAX_POINTS_PER_SIDE:
            raise ConfigError(f"points-per-side must be 1..{MAX_POINTS_PER_SIDE} (a grid of n x n prompts), "
                              f"got {points_per_side}")
        if output_mode not in ("binary_mask", "uncompressed_rle", "coco_rle"):
            raise ConfigError(f"output_mode {output_mode!r}: use binary_mask, uncompressed_rle or coco_rle")
        self.point_grids = point_grids if point_grids is not None else build_all_layer_point_grids(
            points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        self.predictor = SamPredictor(model)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode

    @torch.inference_mode()
    def generate(self, image) -> list[dict]:
        """image: HWC uint8 RGB array (or anything `load_image` reads)."""
        if not isinstance(image, np.ndarray):
            image = np.asarray(load_image(image))
        data = self._generate_masks(image)
        if self.min_mask_region_area > 0:
            data = self._postprocess_small_regions(data, self.min_mask_region_area,
                                                   max(self.box_nms_thresh, self.crop_nms_thresh))
        records = []
        for i, rle in enumerate(data["rles"]):
            if self.output_mode == "coco_rle":
                seg = coco_rle(rle_decode(rle))
            elif self.output_mode == "binary_mask":
                seg = rle_decode(rle)
            else:
                seg = rle
            records.append({
                "segmentation": seg,
                "area": int(sum(rle["counts"][1::2])),
                "bbox": _xyxy_to_xywh(data["boxes"][i].tolist()),
                "predicted_iou": float(data["iou_preds"][i]),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": float(data["stability_score"][i]),
                "crop_box": _xyxy_to_xywh(data["crop_boxes"][i].tolist()),
            })
        return records

    # ------------------------------------------------------------------------------ internals
    def _generate_masks(self, image: np.ndarray) -> dict:
        orig = image.shape[:2]
        crops, layers = generate_crop_boxes(orig, self.crop_n_layers, self.crop_overlap_ratio)
        data = _cat([self._process_crop(image, c, layer, orig) for c, layer in zip(crops, layers)])
        if len(crops) > 1 and len(data["rles"]):
            cb = data["crop_boxes"].float()
            scores = 1 / ((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1]))  # prefer masks from smaller crops
            data = _filter(data, batched_nms(data["boxes"].float(), scores, torch.zeros(len(cb)), self.crop_nms_thresh))
        return data

    def _process_crop(self, image, crop_box, layer, orig) -> dict:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        size = crop.shape[:2]
        self.predictor.set_image(np.ascontiguousarray(crop))
        points = self.point_grids[layer] * np.array(size)[None, ::-1]
        parts = [self._process_batch(points[i : i + self.points_per_batch], size, crop_box, orig)
                 for i in range(0, len(points), self.points_per_batch)]
        if tuple(crop_box) != (0, 0, orig[1], orig[0]):
            self.predictor.reset_image()  # the whole-image embedding stays: callers may prompt it further
        data = _cat(parts)
        if len(data["rles"]):
            data = _filter(data, batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros(len(data["boxes"])),
                                             self.box_nms_thresh))
        data["boxes"] = data["boxes"] + torch.tensor([x0, y0, x0, y0])
        data["points"] = data["points"] + torch.tensor([x0, y0])
        data["crop_boxes"] = torch.tensor([crop_box] * len(data["rles"]), dtype=torch.long).reshape(-1, 4)
        return data

    def _process_batch(self, points: np.ndarray, size, crop_box, orig) -> dict:
        oh, ow = orig
        p = self.predictor
        pts = torch.as_tensor(p.transform.apply_coords(points, size), device=p.model.device)
        labels = torch.ones(len(pts), dtype=torch.int, device=pts.device)
        masks, iou, _ = p.predict_torch(
            pts[:, None].float(), labels[:, None], multimask_output=True, return_logits=True
        )
        k = masks.shape[1]
        data = {"masks": masks.flatten(0, 1).cpu(), "iou_preds": iou.flatten(0, 1).float().cpu(),
                "points": torch.as_tensor(points.repeat(k, axis=0))}
        if self.pred_iou_thresh > 0:
            data = _filter(data, data["iou_preds"] > self.pred_iou_thresh)
        data["stability_score"] = calculate_stability_score(
            data["masks"], p.model.mask_threshold, self.stability_score_offset
        )
        if self.stability_score_thresh > 0:
            data = _filter(data, data["stability_score"] >= self.stability_score_thresh)
        data["masks"] = data["masks"] > p.model.mask_threshold
        data["boxes"] = masks_to_boxes(data["masks"])
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, ow, oh])
        if not bool(keep.all()):
            data = _filter(data, keep)
        x0, y0, x1, y1 = crop_box
        m = data.pop("masks")
        if (x0, y0, x1, y1) != (0, 0, ow, oh):
            m = torch.nn.functional.pad(m, (x0, ow - x1, y0, oh - y1), value=False)
        data["rles"] = mask_to_rle(m)
        return data

    @staticmethod
    def _postprocess_small_regions(data: dict, min_area: int, nms_thresh: float) -> dict:
        if not len(data["rles"]):
            return data
        masks, scores = [], []
        for rle in data["rles"]:
            m, changed_h = remove_small_regions(rle_decode(rle), min_area, "holes")
            m, changed_i = remove_small_regions(m, min_area, "islands")
            masks.append(torch.as_tensor(m)[None])
            scores.append(float(not (changed_h or changed_i)))
        masks = torch.cat(masks)
        boxes = masks_to_boxes(masks)
        keep = batched_nms(boxes.float(), torch.tensor(scores), torch.zeros(len(boxes)), nms_thresh)
        for i in keep.tolist():
            if scores[i] == 0.0:  # recompute what the clean-up changed
                data["rles"][i] = mask_to_rle(masks[i][None])[0]
                data["boxes"][i] = boxes[i]
        return _filter(data, keep)


def _filter(data: dict, keep: torch.Tensor) -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, torch.Tensor):
            out[k] = v[keep]
        else:  # list of RLEs
            idx = keep.nonzero().flatten().tolist() if keep.dtype == torch.bool else keep.tolist()
            out[k] = [v[i] for i in idx]
    return out


def _cat(parts: list[dict]) -> dict:
    parts = [p for p in parts if p]
    if not parts:
        return {"rles": [], "boxes": torch.zeros(0, 4, dtype=torch.long), "iou_preds": torch.zeros(0),
                "points": torch.zeros(0, 2), "stability_score": torch.zeros(0),
                "crop_boxes": torch.zeros(0, 4, dtype=torch.long)}
    out = {}
    for k in parts[0]:
        vals = [p[k] for p in parts]
        out[k] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else sum(vals, [])
    return out
