"""The Shapes world's vocabulary: shapes, colors, sizes, relations, the held-out compositions and the
composite concepts. Everything a caption, a question or a class name can say is defined here."""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "heart")
PLURAL = {s: (s + "es" if s.endswith(("s", "x")) else s + "s") for s in SHAPES}
PLURAL["cross"] = "crosses"

# Bright, saturated object colors over dark backgrounds: color is always readable at 64 px.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 180, 60),
    "blue": (40, 90, 230),
    "purple": (140, 60, 200),
    "pink": (245, 130, 190),
    "white": (240, 240, 240),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

# Radius as a fraction of the image side; two sizes that never overlap, so "small"/"large" is exact.
SIZES: dict[str, tuple[float, float]] = {"small": (0.10, 0.13), "large": (0.17, 0.22)}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# Held-out color x shape compositions: never drawn in a training image, never named in training text.
# One per color, and every shape appears at least once, so each word is still seen in training in
# other compositions: that is what makes compositional zero-shot an honest test.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("orange", "circle"),
        ("yellow", "hexagon"),
        ("green", "cross"),
        ("blue", "heart"),
        ("purple", "square"),
        ("pink", "triangle"),
        ("white", "star"),
    }
)

ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOR_NAMES for s in SHAPES)
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)
UNSEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p in HELD_OUT_PAIRS)

# Composite concepts: arrangements of world shapes. Their names never appear in training text; the
# definitions are what an LLM (CuPL) or a person would write to describe them.
CONCEPTS: dict[str, str] = {
    "snowman": "a small white circle directly on top of a larger white circle",
    "traffic light": "a red circle above a yellow circle above a green circle, stacked in a vertical column",
    "house": "a red triangle roof sitting directly on top of a white square",
    "tree": "a large green circle on top of a small orange square trunk",
    "swiss flag": "a white cross in the middle of a larger red square",
    "target": "a small red circle inside a white circle inside a larger red circle",
    "flower": "a yellow circle in the middle surrounded by four pink circles",
}
CONCEPT_NAMES: tuple[str, ...] = tuple(CONCEPTS)


def is_held_out(color: str | None, shape: str | None) -> bool:
    return (color, shape) in HELD_OUT_PAIRS


def plural(shape: str, n: int) -> str:
    return shape if n == 1 else PLURAL[shape]


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def class_names(pairs=ALL_PAIRS) -> list[str]:
    """Class names of the color x shape classification task, e.g. 'red circle'."""
    return [f"{c} {s}" for c, s in pairs]
