"""Part and whole: the masks a point may mean in a composite-concept scene (SAM's ambiguity).

A click on a snowman's head may mean the head or the snowman; a click on a target's centre the red
dot, the white disc around it or the whole target; a click on its white ring the ring, the white disc
or the target. `mask_levels` lists every valid mask of a concept scene; `levels_at` the ones a pixel
lies in. Every part counts as what you see of it (the ring, the snowman's body below the head); a part
whose covering parts lie inside it (the target's discs, the flag under its cross) also counts whole."""

from __future__ import annotations

import numpy as np

from mmfm.world.scene import Rendered


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def mask_levels(r: Rendered, min_area: int = 12, same: float = 0.95) -> list[np.ndarray]:
    """Every valid mask of a concept scene: per part in drawing order (bottom first) its visible mask
    and, when nested, its whole outline; then the whole concept unless a part already is it (the
    target's outer disc is the whole target). (S, S) bool each, none smaller than `min_area` pixels,
    none with IoU >= `same` to an earlier one."""
    full, vis = r.full_masks, r.masks
    n = len(full)
    out: list[np.ndarray] = []
    for j in range(n):
        out.append(vis[j])
        above = [k for k in range(j + 1, n) if (full[k] & full[j]).any()]
        if above and all((full[k] & full[j]).sum() >= 0.97 * full[k].sum() for k in above):
            out.append(full[j])
    out.append(full.any(0))
    kept: list[np.ndarray] = []
    for m in out:
        if m.sum() >= min_area and all(_iou(m, k) < same for k in kept):
            kept.append(m)
    return kept


def levels_at(levels: list[np.ndarray], x: float, y: float) -> list[int]:
    """Indices of the levels that hold pixel (x, y)."""
    xi, yi = int(round(x)), int(round(y))
    return [i for i, m in enumerate(levels) if m[yi, xi]]
