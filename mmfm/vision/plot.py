"""Line plots drawn with PIL (no matplotlib dependency): training curves, accuracy vs a variable."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

from mmfm.vision.draw import PALETTE


def line_plot(series: dict[str, list[tuple[float, float]]], title: str = "", xlabel: str = "", size=(640, 400),
              log_y: bool = False, markers: bool = False) -> Image.Image:
    """series: name -> [(x, y)]. One panel, shared axes, a legend."""
    w, h = size
    left, right, top, bottom = 60, 20, 30, 45
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and math.isfinite(y) and (y > 0 or not log_y)]
    d.text((left, 8), title, fill=(0, 0, 0), font=font)
    if not pts:
        d.text((w // 2 - 30, h // 2), "no data", fill=(0, 0, 0), font=font)
        return img
    f = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    xs, ys = [p[0] for p in pts], [f(p[1]) for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x, y):
        return left + (x - x0) / (x1 - x0) * (w - left - right), top + (1 - (f(y) - y0) / (y1 - y0)) * (
            h - top - bottom
        )

    d.rectangle((left, top, w - right, h - bottom), outline=(0, 0, 0))
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        yy = top + (1 - i / 4) * (h - top - bottom)
        d.line((left - 4, yy, left, yy), fill=(0, 0, 0))
        label = f"{10 ** yv:.3g}" if log_y else f"{yv:.3g}"
        d.text((4, yy - 6), label, fill=(0, 0, 0), font=font)
        xv = x0 + (x1 - x0) * i / 4
        xx = left + i / 4 * (w - left - right)
        d.line((xx, h - bottom, xx, h - bottom + 4), fill=(0, 0, 0))
        d.text((xx - 10, h - bottom + 6), f"{xv:.4g}", fill=(0, 0, 0), font=font)
    d.text((w // 2 - 20, h - 16), xlabel, fill=(0, 0, 0), font=font)
    for k, (name, s) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        line = [px(x, y) for x, y in s if y is not None and math.isfinite(y) and (y > 0 or not log_y)]
        if len(line) > 1:
            d.line(line, fill=color, width=2)
        if markers or len(line) == 1:
            for x, y in line:
                d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
        d.text((w - right - 150, top + 6 + 12 * k), f"- {name}", fill=color, font=font)
    return img
