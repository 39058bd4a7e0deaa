"""The few emoji VisProg's Emoji module pastes, drawn with PIL at any size (no image files, no font
needed): smiling face, winking face, sunglasses face, neutral face, heart, star."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from mmfm.errors import ProgramError

ALIASES = {"smiley": "smiling_face", "smile": "smiling_face", "smiling": "smiling_face", "happy": "smiling_face",
           "grinning_face": "smiling_face", "smiley_face": "smiling_face", "face_with_smile": "smiling_face",
           "wink": "winking_face", "cool": "sunglasses", "smiling_face_with_sunglasses": "sunglasses",
           "neutral": "neutral_face", "red_heart": "heart", "love": "heart", "star_struck": "star"}
NAMES = ("smiling_face", "winking_face", "sunglasses", "neutral_face", "heart", "star")


def canonical(name: str) -> str:
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_").strip(":")
    key = ALIASES.get(key, key)
    if key not in NAMES:
        raise ProgramError(f"Emoji: unknown emoji {name!r}; known: {', '.join(NAMES)}")
    return key


def render_emoji(name: str, size: int) -> Image.Image:
    """-> (size, size) RGBA, transparent outside the emoji. Drawn at 4x and downsampled (antialiasing)."""
    key = canonical(name)
    size = max(8, int(size))
    s = size * 4
    im = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    ink, lw = (60, 40, 20, 255), max(2, s // 28)
    if key == "heart":
        r = s * 0.27
        d.ellipse((s * 0.5 - 2 * r, s * 0.12, s * 0.5, s * 0.12 + 2 * r), fill=(230, 30, 60, 255))
        d.ellipse((s * 0.5, s * 0.12, s * 0.5 + 2 * r, s * 0.12 + 2 * r), fill=(230, 30, 60, 255))
        d.polygon([(s * 0.5 - 2 * r + s * 0.01, s * 0.12 + r * 1.3), (s * 0.5 + 2 * r - s * 0.01, s * 0.12 + r * 1.3),
                   (s * 0.5, s * 0.95)], fill=(230, 30, 60, 255))
    elif key == "star":
        pts = [(s / 2 + (s * 0.48 if k % 2 == 0 else s * 0.2) * math.sin(k * math.pi / 5),
                s / 2 - (s * 0.48 if k % 2 == 0 else s * 0.2) * math.cos(k * math.pi / 5)) for k in range(10)]
        d.polygon(pts, fill=(255, 200, 30, 255))
    else:  # faces: a yellow disc, eyes, a mouth
        d.ellipse((s * 0.02, s * 0.02, s * 0.98, s * 0.98), fill=(255, 204, 51, 255), outline=(220, 150, 20, 255),
                  width=lw)
        if key == "sunglasses":
            d.rounded_rectangle((s * 0.17, s * 0.3, s * 0.47, s * 0.47), radius=s // 20, fill=(20, 20, 20, 255))
            d.rounded_rectangle((s * 0.53, s * 0.3, s * 0.83, s * 0.47), radius=s // 20, fill=(20, 20, 20, 255))
            d.line((s * 0.45, s * 0.35, s * 0.55, s * 0.35), fill=(20, 20, 20, 255), width=lw)
        else:
            d.ellipse((s * 0.3, s * 0.28, s * 0.4, s * 0.44), fill=ink)
            if key == "winking_face":
                d.arc((s * 0.58, s * 0.3, s * 0.72, s * 0.42), 200, 340, fill=ink, width=lw)
            else:
                d.ellipse((s * 0.6, s * 0.28, s * 0.7, s * 0.44), fill=ink)
        if key == "neutral_face":
            d.line((s * 0.32, s * 0.7, s * 0.68, s * 0.7), fill=ink, width=lw)
        else:
            d.arc((s * 0.25, s * 0.4, s * 0.75, s * 0.8), 20, 160, fill=ink, width=lw)
    return im.resize((size, size), Image.LANCZOS)


__all__ = ["render_emoji", "canonical", "NAMES"]
