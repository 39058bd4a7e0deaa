"""Molmo2's image and video preprocessing, on torch only, with the numbers of transformers' processors.

An image becomes a low-resolution view (the whole image resized to one crop) followed by overlapping
high-resolution crops of a canvas tiled to fit at most `max_crops` crops; each crop is cut into patches
flattened to (patch * patch * 3) vectors. A video frame is the low-resolution view alone. Pooling
tables say which patches each language token pools (a pool_h x pool_w window, -1 where the window
hangs over the edge), as indices into the flattened patches of everything given to the model at once.

    image_inputs(image uint8 (3, H, W)) -> patches (1 + crops, P, p*p*3), pooling (T, pool_h*pool_w),
                                           grid (low_h, low_w, high_h, high_w) in pooled tokens
    video_inputs(frames uint8 (F, 3, H, W)) -> patches (F, P, p*p*3), pooling (F*rows*cols, K),
                                               grid (F, rows, cols)
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from mmfm.errors import InvalidImage

MOLMO2_MEAN = (0.5, 0.5, 0.5)  # transformers' IMAGENET_STANDARD_MEAN / STD
MOLMO2_STD = (0.5, 0.5, 0.5)


def _check_uint8(x: torch.Tensor, ndim: int, what: str) -> None:
    if x.dtype != torch.uint8 or x.ndim != ndim or x.shape[-3] != 3 or min(x.shape[-2:]) < 1:
        shape = "(3, H, W)" if ndim == 3 else "(F, 3, H, W)"
        raise InvalidImage(f"{what} must be a uint8 {shape} tensor, got {x.dtype} {tuple(x.shape)}")


def resize_normalize(images: torch.Tensor, size: tuple[int, int], mean=MOLMO2_MEAN, std=MOLMO2_STD) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 (N, 3, h, w): bilinear without antialias, rounded back to 8 bits,
    then (x - 255 mean) / (255 std), as transformers' torchvision backend does."""
    x = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=False)
    x = x.round().clamp(0, 255)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255
    return (x - m) / s


def patchify(crops: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 3, h, w) -> (N, (h / patch) * (w / patch), patch * patch * 3), each patch row-major, channels last."""
    n, c, h, w = crops.shape
    x = crops.permute(0, 2, 3, 1).reshape(n, h // patch, patch, w // patch, patch, c)
    return x.transpose(2, 3).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def pooling_windows(index: torch.Tensor, pool_h: int, pool_w: int) -> tuple[torch.Tensor, int, int]:
    """An (h, w) grid of patch indices -> (rows * cols, pool_h * pool_w) windows, the grid padded with -1
    evenly on both sides (the extra row or column at the bottom / right), and (rows, cols)."""
    ph = (-index.shape[0]) % pool_h
    pw = (-index.shape[1]) % pool_w
    index = F.pad(index, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2), value=-1)
    rows, cols = index.shape[0] // pool_h, index.shape[1] // pool_w
    windows = index.reshape(rows, pool_h, cols, pool_w).permute(0, 2, 1, 3).reshape(rows * cols, pool_h * pool_w)
    return windows, rows, cols


def select_tiling(h: int, w: int, window: int, max_crops: int) -> tuple[int, int]:
    """The (rows, cols) of crops whose windows cover (h, w) with the least upscaling, or, when every
    tiling must shrink the image, the one that shrinks it least (ties: fewer crops, then fewer rows)."""
    tilings = sorted(((a, b) for a, b in itertools.product(range(1, max_crops + 1), repeat=2) if a * b <= max_crops),
                     key=lambda t: (t[0] * t[1], t[0]))
    scales = [min(a * window / h, b * window / w) for a, b in tilings]
    if all(s < 1 for s in scales):
        return tilings[max(range(len(scales)), key=lambda i: (scales[i], -i))]
    ups = [s if s >= 1 else float("inf") for s in scales]
    return tilings[min(range(len(ups)), key=lambda i: (ups[i], i))]


def image_inputs(image: torch.Tensor, crop_size: int = 378, patch: int = 14, max_crops: int = 8,
                 margins: tuple[int, int] = (4, 4), pool: tuple[int, int] = (2, 2),
                 mean=MOLMO2_MEAN, std=MOLMO2_STD) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image -> (patches, pooling, grid); see the module docstring."""
    _check_uint8(image, 3, "an image")
    left, right = margins
    crop_patches = crop_size // patch
    window_patches = crop_patches - left - right
    if window_patches < 1:
        raise InvalidImage(f"overlap margins {margins} leave no window in a crop of {crop_patches} patches")
    window = window_patches * patch
    margin = (left + right) * patch
    _, h, w = image.shape
    th, tw = select_tiling(h - margin, w - margin, window, max_crops)
    canvas_h, canvas_w = th * window + margin, tw * window + margin
    canvas = resize_normalize(image[None], (canvas_h, canvas_w), mean, std)
    crops = canvas.unfold(2, crop_size, window).unfold(3, crop_size, window)  # (1, 3, th, tw, cs, cs)
    crops = crops.permute(0, 2, 3, 1, 4, 5).reshape(th * tw, 3, crop_size, crop_size)

    # Each crop contributes its window, the margins only where they lie on the canvas's border.
    grid = torch.arange(th * tw * crop_patches ** 2, dtype=torch.long).reshape(th, tw, crop_patches, crop_patches)
    if left:
        grid[1:, :, :left, :] = -1
        grid[:, 1:, :, :left] = -1
    if right:
        grid[:-1, :, -right:, :] = -1
        grid[:, :-1, :, -right:] = -1
    grid = grid.permute(0, 2, 1, 3).reshape(-1)
    grid = grid[grid >= 0].reshape(canvas_h // patch, canvas_w // patch)
    high, high_rows, high_cols = pooling_windows(grid, *pool)

    low = resize_normalize(image[None], (crop_size, crop_size), mean, std)
    low_grid = torch.arange(crop_patches ** 2, dtype=torch.long).reshape(crop_patches, crop_patches)
    low_pool, low_rows, low_cols = pooling_windows(low_grid, *pool)
    per_crop = crop_patches ** 2
    pooling = torch.cat([low_pool, torch.where(high >= 0, high + per_crop, high)])
    patches = patchify(torch.cat([low, crops]), patch)
    return patches, pooling, torch.tensor([low_rows, low_cols, high_rows, high_cols])


def video_inputs(frames: torch.Tensor, crop_size: int = 378, patch: int = 14, pool: tuple[int, int] = (3, 3),
                 mean=MOLMO2_MEAN, std=MOLMO2_STD) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampled frames -> (patches, pooling, grid); each frame is one low-resolution view."""
    _check_uint8(frames, 4, "video frames")
    n = frames.shape[0]
    patches = patchify(resize_normalize(frames, (crop_size, crop_size), mean, std), patch)
    side = crop_size // patch
    windows, rows, cols = pooling_windows(torch.arange(side * side, dtype=torch.long).reshape(side, side), *pool)
    offsets = (torch.arange(n) * side * side).view(-1, 1, 1)
    pooling = torch.where(windows >= 0, windows + offsets, windows).reshape(-1, windows.shape[-1])
    return patches, pooling, torch.tensor([n, rows, cols])


def offset_pooling(pooling: list[torch.Tensor], patches: list[torch.Tensor]) -> torch.Tensor:
    """Pooling tables of several images (each indexing its own patches) -> one table over their
    concatenated patches."""
    out, offset = [], 0
    for table, p in zip(pooling, patches):
        out.append(torch.where(table >= 0, table + offset, table))
        offset += p.shape[0] * p.shape[1]
    return torch.cat(out)


def sample_frame_indices(total: int, fps: float | None, max_frames: int = 64, max_fps: float = 2.0) -> list[int]:
    """Which of `total` frames Molmo2's video processor keeps (transformers 5.25's rule; fps None: taken
    as max_fps). A video longer than `max_frames` at `max_fps`: `max_frames` spread evenly from the first
    frame to the last; a shorter one: every fps / max_fps-th frame from the first, and the last."""
    if total < 1:
        raise InvalidImage("the video has no frames")
    fps = max_fps if fps is None else fps
    if total / fps > (max_frames - 1) / max_fps:
        return np.linspace(0, total - 1, min(max_frames, total)).astype(int).tolist()
    keep = np.append(np.arange(0, total - 1, fps / max_fps), total - 1)
    return np.unique(keep.round().astype(int)).tolist()  # a slow video repeats no frame


__all__ = ["MOLMO2_MEAN", "MOLMO2_STD", "image_inputs", "video_inputs", "offset_pooling", "pooling_windows",
           "patchify", "resize_normalize", "sample_frame_indices", "select_tiling"]
