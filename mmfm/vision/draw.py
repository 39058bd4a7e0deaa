"""Overlays a person can look at: masks, boxes, points and labels drawn over an image, and grids."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
]


def overlay(
    image: Image.Image | np.ndarray,
    masks=None,
    boxes=None,
    points=None,
    labels=None,
    alpha: float = 0.45,
    scale: int = 1,
) -> Image.Image:
    """Draw (N, H, W) masks as colored translucent regions, (N, 4) XYXY boxes, [(x, y)] points and
    per-box text labels. `scale` upsamples first (nearest), so small world images stay readable."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    arr = np.asarray(img).astype(np.float32)
    if masks is not None:
        for i, m in enumerate(np.asarray(masks, dtype=bool)):
            if scale != 1:
                m = m.repeat(scale, 0).repeat(scale, 1)
            c = np.asarray(PALETTE[i % len(PALETTE)], dtype=np.float32)
            arr[m] = (1 - alpha) * arr[m] + alpha * c
    out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    if boxes is not None:
        for i, b in enumerate(np.asarray(boxes, dtype=float)):
            x0, y0, x1, y1 = (b * scale).tolist()
            color = PALETTE[i % len(PALETTE)]
            draw.rectangle((x0, y0, x1 + scale - 1, y1 + scale - 1), outline=color, width=max(1, scale // 2))
            if labels is not None and i < len(labels):
                draw.text((x0 + 2, y0 + 1), str(labels[i]), fill=(255, 255, 255), font=font)
    if points is not None:
        rad = max(2, 2 * scale)
        for x, y in points:
            x, y = x * scale, y * scale
            draw.ellipse(
                (x - rad, y - rad, x + rad, y + rad), fill=(255, 255, 255), outline=(0, 0, 0), width=max(1, scale // 2)
            )
    return out


def grid(images: list[Image.Image], cols: int = 4, pad: int = 4, captions: list[str] | None = None) -> Image.Image:
    """Tile images (all the same size) into one picture, with an optional caption under each."""
    if not images:
        raise ValueError("grid needs at least one image")
    w, h = images[0].size
    cap_h = 14 if captions else 0
    rows = (len(images) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + cap_h + pad) + pad), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for k, im in enumerate(images):
        x = pad + (k % cols) * (w + pad)
        y = pad + (k // cols) * (h + cap_h + pad)
        canvas.paste(im.convert("RGB"), (x, y))
        if captions:
            draw.text((x, y + h + 1), captions[k][: max(8, w // 6)], fill=(230, 230, 230), font=font)
    return canvas
