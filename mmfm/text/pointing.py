"""Molmo's point format: points in percent of the image (0-100, one decimal), sorted by x then y.

    <point x="63.5" y="44.5" alt="a red circle">a red circle</point>
    <points x1="10.0" y1="20.0" x2="60.5" y2="20.0" alt="red circles">red circles</points>
"""

from __future__ import annotations

import html
import re

from mmfm.errors import InvalidText


def _pct(v: float, extent: int) -> float:
    return round(100.0 * v / extent, 1)


def format_points(points, width: int, height: int, text: str) -> str:
    """`points`: iterable of (x, y) pixel coordinates -> Molmo markup. No points gives an empty string:
    Molmo answers in words when there is nothing to point at."""
    pts = sorted((_pct(x, width), _pct(y, height)) for x, y in points)
    alt = html.escape(text, quote=True)
    if not pts:
        return ""
    if len(pts) == 1:
        (x, y), = pts
        return f'<point x="{x:.1f}" y="{y:.1f}" alt="{alt}">{alt}</point>'
    coords = " ".join(f'x{i}="{x:.1f}" y{i}="{y:.1f}"' for i, (x, y) in enumerate(pts, 1))
    return f'<points {coords} alt="{alt}">{alt}</points>'


def count_answer(points, width: int, height: int, text: str) -> str:
    """Molmo's point-then-count answer."""
    pts = list(points)
    if not pts:
        return "There are none."
    return f"Counting the {format_points(pts, width, height, text)} shows a total of {len(pts)}."


_TAG = re.compile(r"<(points?)\b([^>]*)>(.*?)</\1>", re.S)
_ATTR = re.compile(r'([a-zA-Z_]+\d*)\s*=\s*"([^"]*)"')


def parse_points(text: str, width: int = 100, height: int = 100) -> list[tuple[float, float]]:
    """Every point in Molmo markup in `text`, in pixels of a `width` x `height` image (the default
    100 x 100 gives percent). Malformed coordinates raise InvalidText."""
    out: list[tuple[float, float]] = []
    for tag in _TAG.finditer(text):
        attrs = dict(_ATTR.findall(tag.group(2)))
        try:
            if tag.group(1) == "point":
                pairs = [(attrs["x"], attrs["y"])]
            else:
                idx = sorted(int(k[1:]) for k in attrs if re.fullmatch(r"x\d+", k))
                pairs = [(attrs[f"x{i}"], attrs[f"y{i}"]) for i in idx]
            for xs, ys in pairs:
                x, y = float(xs), float(ys)
                if not (0.0 <= x <= 100.0 and 0.0 <= y <= 100.0):
                    raise ValueError(f"point ({x}, {y}) is outside 0-100")
                out.append((x * width / 100.0, y * height / 100.0))
        except (KeyError, ValueError) as e:
            raise InvalidText(f"malformed point markup {tag.group(0)[:80]!r}: {e}; expected Molmo's format") from e
    return out


# ------------------------------------------------------------------------------------------- Molmo2
# Molmo2 writes <points coords="I k x y k x y ...">label</points>: the image index I (1-based), then
# for each point its index k and x, y as integers in 0-1000 (three digits), sorted by x then y.
# Points on several images are groups "I k x y ...", joined here with ";".
_COORDS = re.compile(r'<points\b[^>]*\bcoords="([^"]*)"[^>]*>(.*?)</points>', re.S)


def format_points_v2(points_by_image: dict[int, list], sizes: dict[int, tuple[int, int]], text: str) -> str:
    """points_by_image: {image index (1-based): [(x, y) pixels]}; sizes: {index: (width, height)}."""
    groups = []
    for img in sorted(points_by_image):
        w, h = sizes[img]
        pts = sorted((min(1000, max(0, round(1000 * x / w))), min(1000, max(0, round(1000 * y / h))))
                     for x, y in points_by_image[img])
        if pts:
            groups.append(f"{img} " + " ".join(f"{k} {x:03d} {y:03d}" for k, (x, y) in enumerate(pts, 1)))
    if not groups:
        return ""
    alt = html.escape(text, quote=True)
    return f'<points coords="{"; ".join(groups)}">{alt}</points>'


def parse_points_v2(text: str, sizes: dict[int, tuple[int, int]] | None = None) -> list[tuple[int, float, float]]:
    """Every Molmo2 point in `text` as (image index, x, y): pixels of that image when `sizes` gives its
    (width, height), else 0-1000 units. Malformed coordinates raise InvalidText."""
    out = []
    for tag in _COORDS.finditer(text):
        for group in re.split(r"[;,]", tag.group(1)):
            nums = group.split()
            if not nums:
                continue
            try:
                vals = [int(v) for v in nums]
            except ValueError as e:
                raise InvalidText(f"malformed Molmo2 coords {group!r}: {e}") from e
            img, rest = vals[0], vals[1:]
            if len(rest) % 3:
                raise InvalidText(f"malformed Molmo2 coords {group!r}: expected image index then (k, x, y) triples")
            for k in range(0, len(rest), 3):
                x, y = rest[k + 1], rest[k + 2]
                if not (0 <= x <= 1000 and 0 <= y <= 1000):
                    raise InvalidText(f"Molmo2 point ({x}, {y}) is outside 0-1000")
                if sizes is not None:
                    if img not in sizes:
                        raise InvalidText(f"Molmo2 points refer to image {img}, but only {sorted(sizes)} exist")
                    w, h = sizes[img]
                    out.append((img, x * w / 1000.0, y * h / 1000.0))
                else:
                    out.append((img, float(x), float(y)))
    return out


# ------------------------------------------------------------------------------------ Molmo2, video
# In a video the group's first number is a time in seconds (one decimal) instead of an image index:
# <points coords="0.5 1 412 230; 2.0 2 655 718">red circles</points>. Tracks use the same markup,
# one group per frame with the object's id as k.


def format_video_points(points, width: int, height: int, text: str) -> str:
    """points: (time s, k, x, y pixels) -> Molmo2's video markup, groups in time order."""
    groups: dict[float, list] = {}
    for t, k, x, y in points:
        groups.setdefault(round(float(t), 1), []).append(
            (int(k), min(1000, max(0, round(1000 * x / width))), min(1000, max(0, round(1000 * y / height)))))
    if not groups:
        return ""
    body = "; ".join(f"{t:.1f} " + " ".join(f"{k} {x:03d} {y:03d}" for k, x, y in sorted(pts))
                     for t, pts in sorted(groups.items()))
    return f'<points coords="{body}">{html.escape(text, quote=True)}</points>'


def parse_video_points(text: str, duration: float, width: int = 1000,
                       height: int = 1000) -> list[tuple[float, int, float, float]]:
    """Every (time, k, x, y) in Molmo2's video markup, x and y in pixels of a width x height frame.
    A time outside 0..duration, a coordinate outside 0-1000 or a malformed group is InvalidText."""
    out = []
    for tag in _COORDS.finditer(text):
        for group in tag.group(1).split(";"):
            nums = group.split()
            if not nums:
                continue
            try:
                t, rest = float(nums[0]), [int(v) for v in nums[1:]]
            except ValueError as e:
                raise InvalidText(f"malformed Molmo2 video coords {group!r}: {e}") from e
            if not rest or len(rest) % 3:
                raise InvalidText(f"malformed Molmo2 video coords {group!r}: expected a time then (k, x, y) triples")
            if not 0.0 <= t <= duration + 1e-6:
                raise InvalidText(f"Molmo2 video point at {t} s is outside the clip (0-{duration:.1f} s)")
            for i in range(0, len(rest), 3):
                k, x, y = rest[i : i + 3]
                if not (0 <= x <= 1000 and 0 <= y <= 1000):
                    raise InvalidText(f"Molmo2 point ({x}, {y}) is outside 0-1000")
                out.append((t, k, x * width / 1000.0, y * height / 1000.0))
    return out
