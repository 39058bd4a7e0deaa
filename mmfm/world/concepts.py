"""Composite concepts (snowman, traffic light, ...) built from world shapes. Their names never appear
in training text (see vocab.CONCEPTS for the definitions an LLM or a person would write)."""

from __future__ import annotations

import numpy as np

from mmfm.world.scene import Obj, Scene, sample_background, sample_rgb
from mmfm.world.vocab import CONCEPT_NAMES

# Each layout lists (shape, color, dx, dy, r) in units of the concept's scale, bottom layer first.
_LAYOUTS: dict[str, list[tuple[str, str, float, float, float]]] = {
    "snowman": [("circle", "white", 0.0, 0.75, 1.0), ("circle", "white", 0.0, -0.85, 0.62)],
    "traffic light": [
        ("circle", "red", 0.0, -1.3, 0.6),
        ("circle", "yellow", 0.0, 0.0, 0.6),
        ("circle", "green", 0.0, 1.3, 0.6),
    ],
    # square half-side is 0.82 r; the triangle's base sits on the square's top edge
    "house": [("square", "white", 0.0, 0.55, 1.0), ("triangle", "red", 0.0, -0.27 - 0.645 * 1.0, 1.0)],
    "tree": [("square", "orange", 0.0, 1.05, 0.42), ("circle", "green", 0.0, -0.25, 1.0)],
    "swiss flag": [("square", "red", 0.0, 0.0, 1.25), ("cross", "white", 0.0, 0.0, 0.72)],
    "target": [
        ("circle", "red", 0.0, 0.0, 1.25),
        ("circle", "white", 0.0, 0.0, 0.85),
        ("circle", "red", 0.0, 0.0, 0.42),
    ],
    "flower": [
        ("circle", "pink", -0.85, 0.0, 0.5),
        ("circle", "pink", 0.85, 0.0, 0.5),
        ("circle", "pink", 0.0, -0.85, 0.5),
        ("circle", "pink", 0.0, 0.85, 0.5),
        ("circle", "yellow", 0.0, 0.0, 0.48),
    ],
}
assert set(_LAYOUTS) == set(CONCEPT_NAMES)


def concept_scene(rng: np.random.Generator, name: str, scale: tuple[float, float] = (0.13, 0.17)) -> Scene:
    """A scene holding one composite concept at a random place and scale."""
    u = float(rng.uniform(*scale))
    parts = _LAYOUTS[name]
    lo_x = min(dx - r for _, _, dx, _, r in parts) * u
    hi_x = max(dx + r for _, _, dx, _, r in parts) * u
    lo_y = min(dy - r for _, _, _, dy, r in parts) * u
    hi_y = max(dy + r for _, _, _, dy, r in parts) * u
    m = 0.02
    cx = float(rng.uniform(m - lo_x, 1 - m - hi_x)) if hi_x - lo_x < 1 - 2 * m else 0.5
    cy = float(rng.uniform(m - lo_y, 1 - m - hi_y)) if hi_y - lo_y < 1 - 2 * m else 0.5
    objects = []
    for shape, color, dx, dy, r in parts:
        size = "small" if r * u < 0.15 else "large"
        objects.append(Obj(shape, color, size, cx + dx * u, cy + dy * u, r * u, 0.0, sample_rgb(rng, color)))
    return Scene(tuple(objects), sample_background(rng), int(rng.integers(2**31)), tags=(f"concept:{name}",))
