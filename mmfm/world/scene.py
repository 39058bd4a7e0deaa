"""Scenes of the Shapes world: sampling (where objects go) and rendering (pixels and exact masks).

A scene is resolution-free (positions and radii are fractions of the image side), so the same scene
renders at 64 px for training and 512 px for a demo. Rendering paints each object's full mask in
z-order, so the visible mask of an object is, by construction, exactly the set of pixels where it is
drawn on top: ground truth and image cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from mmfm.world.vocab import COLORS, SIZES


@dataclass(frozen=True)
class Obj:
    """One object: `x, y, r` are fractions of the image side (center and radius), rotation in degrees."""

    shape: str
    color: str
    size: str
    x: float
    y: float
    r: float
    rotation: float = 0.0
    rgb: tuple[int, int, int] = (0, 0, 0)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Background:
    kind: str  # flat | gradient | noise
    color0: tuple[int, int, int]
    color1: tuple[int, int, int]
    angle: float = 0.0
    noise_std: float = 0.0


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: Background
    seed: int  # texture noise of this scene
    tags: tuple[str, ...] = field(default=())  # e.g. ("concept:snowman",) for composite scenes


@dataclass
class Rendered:
    """A scene drawn at `size` px. Shapes: image (S, S, 3) uint8; masks (N, S, S) bool, visible part;
    full_masks (N, S, S) bool, whole object; boxes (N, 4) int XYXY inclusive pixel indices (SAM's
    convention); centroids (N, 2) float (x, y) pixel coordinates of the visible mask; areas (N,)."""

    scene: Scene
    size: int
    image: np.ndarray
    masks: np.ndarray
    full_masks: np.ndarray
    boxes: np.ndarray
    centroids: np.ndarray
    areas: np.ndarray

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


# ---------------------------------------------------------------------------------------------------
# geometry: unit outlines, radius ~1, y pointing down


def _regular(n: int, phase: float = -90.0, radius: float = 1.0) -> np.ndarray:
    a = np.deg2rad(phase + 360.0 * np.arange(n) / n)
    return np.stack([radius * np.cos(a), radius * np.sin(a)], 1)


def _star() -> np.ndarray:
    outer, inner = _regular(5), _regular(5, phase=-90 + 36, radius=0.45)
    return np.stack([outer, inner], 1).reshape(-1, 2)


def _cross(w: float = 0.34) -> np.ndarray:
    return np.array(
        [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)],
        dtype=float,
    )


def _heart(n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], 1) / 16.5
    return pts - (pts.max(0) + pts.min(0)) / 2  # center the bounding box


OUTLINES: dict[str, np.ndarray | None] = {
    "circle": None,  # drawn as an ellipse
    "square": np.array([(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)]),
    "triangle": _regular(3) * 1.05 + np.array([0.0, 0.12]),  # lower the centroid to center the box
    "star": _star() * 1.05,
    "hexagon": _regular(6, phase=0.0),
    "cross": _cross(),
    "heart": _heart(),
}


def outline(obj: Obj, size: int) -> list[tuple[float, float]] | None:
    """Polygon of `obj` in pixel coordinates at image side `size` (None for circles)."""
    base = OUTLINES[obj.shape]
    if base is None:
        return None
    a = math.radians(obj.rotation)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = (base @ rot.T) * obj.r * size + np.array([obj.x, obj.y]) * size
    return [tuple(p) for p in pts.tolist()]


def object_mask(obj: Obj, size: int) -> np.ndarray:
    """(S, S) bool: every pixel the object covers when drawn alone."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    poly = outline(obj, size)
    if poly is None:
        cx, cy, r = obj.x * size, obj.y * size, obj.r * size
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(poly, fill=255)
    return np.asarray(img) > 0


# ---------------------------------------------------------------------------------------------------
# rendering


def render_background(bg: Background, size: int, rng: np.random.Generator) -> np.ndarray:
    c0 = np.asarray(bg.color0, dtype=np.float32)
    if bg.kind == "gradient":
        c1 = np.asarray(bg.color1, dtype=np.float32)
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)
        a = math.radians(bg.angle)
        ramp = (math.cos(a) * t[None, :] + math.sin(a) * t[:, None]) / (abs(math.cos(a)) + abs(math.sin(a)))
        ramp = ramp - ramp.min()
        ramp = ramp / max(float(ramp.max()), 1e-6)
        out = c0 + (c1 - c0) * ramp[..., None]
    else:
        out = np.broadcast_to(c0, (size, size, 3)).copy()
    if bg.kind == "noise":
        out = out + rng.normal(0.0, bg.noise_std, (size, size, 3)).astype(np.float32)
    return out


def render(scene: Scene, size: int = 64) -> Rendered:
    """Draw `scene` at `size` x `size` pixels, with exact visible masks."""
    rng = np.random.default_rng(scene.seed)
    canvas = render_background(scene.background, size, rng)
    # Fine per-pixel texture on objects, so that no model can key on one exact RGB value.
    texture = rng.integers(-7, 8, (size, size, 3)).astype(np.float32)
    n = len(scene.objects)
    full = np.zeros((n, size, size), dtype=bool)
    for i, obj in enumerate(scene.objects):  # z-order: later objects are drawn on top
        full[i] = object_mask(obj, size)
        m = full[i]
        canvas[m] = np.asarray(obj.rgb, dtype=np.float32) + texture[m]
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    visible = full.copy()
    covered = np.zeros((size, size), dtype=bool)
    for i in range(n - 1, -1, -1):
        visible[i] &= ~covered
        covered |= full[i]
    boxes, centroids, areas = mask_stats(visible)
    return Rendered(scene, size, image, visible, full, boxes, centroids, areas)


def mask_stats(masks: np.ndarray):
    """Boxes (XYXY inclusive), centroids (x, y) and areas of (N, H, W) bool masks; empty masks give
    box [0,0,0,0] and centroid (nan, nan)."""
    n = masks.shape[0]
    boxes = np.zeros((n, 4), dtype=np.int64)
    cents = np.full((n, 2), np.nan, dtype=np.float64)
    areas = masks.reshape(n, masks.shape[1] * masks.shape[2]).sum(1)
    for i in range(n):
        if areas[i] == 0:
            continue
        ys, xs = np.nonzero(masks[i])
        boxes[i] = (xs.min(), ys.min(), xs.max(), ys.max())
        cents[i] = (xs.mean(), ys.mean())
    return boxes, cents, areas


# ---------------------------------------------------------------------------------------------------
# sampling


def sample_rgb(rng: np.random.Generator, color: str, jitter: int = 14) -> tuple[int, int, int]:
    base = np.asarray(COLORS[color])
    return tuple(int(v) for v in np.clip(base + rng.integers(-jitter, jitter + 1, 3), 0, 255))


def sample_background(rng: np.random.Generator) -> Background:
    def dark():
        g = rng.uniform(12, 80)
        return tuple(int(v) for v in np.clip(g + rng.uniform(-14, 14, 3), 0, 255))

    kind = ("flat", "gradient", "noise")[rng.integers(3)]
    return Background(kind, dark(), dark(), float(rng.uniform(0, 360)), float(rng.uniform(5, 12)))


def sample_object(
    rng: np.random.Generator,
    color: str,
    shape: str,
    size: str | None = None,
    rotate: bool = True,
) -> Obj:
    size = size or ("small", "large")[rng.integers(2)]
    lo, hi = SIZES[size]
    r = float(rng.uniform(lo, hi))
    margin = 0.02
    x, y = (float(v) for v in rng.uniform(r + margin, 1 - r - margin, 2))
    rot = float(rng.uniform(-30, 30)) if rotate and shape != "circle" else 0.0
    return Obj(shape, color, size, x, y, r, rot, sample_rgb(rng, color))


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """(S, S) bool grown by `px` pixels in every direction (8-connected: a square dilation)."""
    out = mask.copy()
    for _ in range(px):
        p = np.pad(out, 1)
        out = p[1:-1, 1:-1].copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                out |= p[dy : dy + out.shape[0], dx : dx + out.shape[1]]
    return out


def too_near(mask: np.ndarray, color: str, full: list[np.ndarray], objects: list, px: int) -> list[int]:
    """Indices of the placed objects of `color` (whole masks `full`) that come within `px` pixels of an
    object of that colour with whole mask `mask`: those it would touch or hide under."""
    same = [i for i, o in enumerate(objects) if o.color == color]
    if not same:
        return []
    near = grow(mask, px)
    return [i for i in same if (near & full[i]).any()]


def keeps_apart(mask: np.ndarray, color: str, full: list[np.ndarray], objects: list, px: int) -> bool:
    """Whether that object keeps at least `px` pixels between itself and every object of its colour."""
    return not too_near(mask, color, full, objects, px)


def sample_scene(
    rng: np.random.Generator,
    n_objects: int,
    pairs: tuple[tuple[str, str], ...],
    check_size: int = 64,
    min_visible: float = 0.6,
    min_pixels: int = 12,
    repeat_prob: float = 0.3,
    rotate: bool = True,
    max_tries: int = 25,
    apart: int = 0,
) -> Scene:
    """Place up to `n_objects` objects whose (color, shape) come from `pairs`. An object may overlap
    others, but every object keeps >= `min_visible` of its area visible at `check_size` px (else it is
    placed again; after `max_tries` it is left out), so what a caption names can be seen.

    `apart` > 0: objects of one colour keep at least that many pixels (at `check_size`) between them, so
    each can be counted by eye; by default two red hexagons may overlap into one red blob whose parts
    differ only by their colour jitter. With 0 the draws are exactly those of a scene without the rule."""
    objects: list[Obj] = []
    full: list[np.ndarray] = []  # whole masks at check_size
    vis: list[np.ndarray] = []  # what stays visible of each, given the objects above it
    for _ in range(n_objects):
        if objects and rng.random() < repeat_prob:  # repeats make counting questions interesting
            prev = objects[rng.integers(len(objects))]
            color, shape = prev.color, prev.shape
        else:
            color, shape = pairs[rng.integers(len(pairs))]
        for _try in range(max_tries):
            obj = sample_object(rng, color, shape, rotate=rotate)
            m = object_mask(obj, check_size)
            if m.sum() < min_pixels:
                continue
            if apart and not keeps_apart(m, color, full, objects, apart):
                continue
            if all((v & ~m).sum() >= max(min_visible * f.sum(), min_pixels) for f, v in zip(full, vis)):
                vis = [v & ~m for v in vis] + [m]
                full.append(m)
                objects.append(obj)
                break
    return Scene(tuple(objects), sample_background(rng), int(rng.integers(2**31)))
