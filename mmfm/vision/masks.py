"""Mask utilities: COCO-compatible run-length encoding, mask -> box, IoU, batched box NMS.

RLE follows pycocotools: the mask is read in column-major (Fortran) order, counts alternate runs of
0s and 1s starting with 0s; `coco_rle` packs counts into COCO's compressed string.
"""

from __future__ import annotations

import numpy as np
import torch


# ------------------------------------------------------------------------------------------- RLE
def rle_encode(mask: np.ndarray) -> dict:
    """(H, W) bool -> {"size": [H, W], "counts": [int, ...]} (uncompressed RLE, as SAM's
    `uncompressed_rle` output mode)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    h, w = mask.shape
    flat = mask.ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    if not flat.size:
        counts = []
    return {"size": [h, w], "counts": counts}


def rle_decode(rle: dict) -> np.ndarray:
    """Uncompressed or compressed (COCO string) RLE -> (H, W) bool."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = _string_to_counts(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected {h * w} for size {h}x{w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()


def coco_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO compressed RLE {"size": [H, W], "counts": str}, byte-identical to
    pycocotools.mask.encode (decoded to str)."""
    rle = rle_encode(mask)
    return {"size": rle["size"], "counts": _counts_to_string(rle["counts"])}


def _counts_to_string(counts: list[int]) -> str:
    # LEB128-like: 5 bits per char with a continuation bit, offset by 48; counts after the second are
    # stored as differences from the count two places before (pycocotools' rleToString).
    out = []
    for i, c in enumerate(counts):
        x = int(c)
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def _string_to_counts(s) -> list[int]:
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_area(rle: dict) -> int:
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = _string_to_counts(counts)
    return int(sum(counts[1::2]))


# ------------------------------------------------------------------------------------------- boxes
def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool -> (..., 4) XYXY with inclusive max pixel indices (SAM's batched_mask_to_box);
    an empty mask gives [0, 0, 0, 0]."""
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device, dtype=torch.long)
    h, w = masks.shape[-2:]
    m = masks.bool()
    rows = m.any(-1)  # (..., H)
    cols = m.any(-2)  # (..., W)
    ar_h = torch.arange(h, device=m.device)
    ar_w = torch.arange(w, device=m.device)
    y1 = torch.where(rows, ar_h, -1).amax(-1)
    y0 = torch.where(rows, ar_h, h).amin(-1)
    x1 = torch.where(cols, ar_w, -1).amax(-1)
    x0 = torch.where(cols, ar_w, w).amin(-1)
    boxes = torch.stack([x0, y0, x1, y1], -1)
    empty = ~rows.any(-1)
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) XYXY (continuous coordinates, as torchvision.ops.box_iou) -> (N, M)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=torch.finfo(torch.float32).tiny)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, H, W), (M, H, W) bool -> (N, M) IoU; two empty masks have IoU 0."""
    a = a.flatten(1).float()
    b = b.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of kept boxes, highest score first (torchvision.ops.nms semantics: drop a box when its
    IoU with a kept, higher-scoring box is > iou_threshold)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes[order].float(), boxes[order].float())
    n = order.numel()
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    # Greedy pass over a precomputed IoU matrix: O(N^2) memory, no per-pair Python work.
    over = iou > iou_threshold
    for i in range(n):
        if keep[i]:
            keep[i + 1 :] &= ~over[i, i + 1 :]
    return order[keep]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each category in `idxs` (torchvision.ops.batched_nms): boxes of different categories
    never suppress each other. Uses the coordinate-offset trick."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    offset = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offset[:, None], scores, iou_threshold)


def mask_ious(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Element-wise: (..., H, W) bool x (..., H, W) bool -> (...) IoU (1 when both are empty, as a
    prediction of nothing for nothing is right). `mask_iou` above is the pairwise (N, M) version."""
    inter = (pred & gt).flatten(-2).sum(-1).float()
    union = (pred | gt).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
