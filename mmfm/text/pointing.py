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
