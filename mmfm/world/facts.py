"""Facts: the structured meaning behind every caption, answer and hard negative of the world, and the
one function that decides whether a fact holds of a rendered scene. Generators keep the facts next to
the text, so tests can check every sentence against the pixels.

Fact forms (tuples):
    ("count", color, shape, size, n)    exactly n visible objects match (None matches anything)
    ("atleast", color, shape, size, n)  at least n match
    ("rel", (c1, s1), relation, (c2, s2))  both objects unique and clearly in that relation
    ("not", fact)
"""

from __future__ import annotations

from mmfm.world.scene import Rendered

# Two objects are in a relation only when their visible centroids are this far apart (fraction of the
# image side) along that axis: no sentence depends on a one-pixel difference.
REL_MARGIN = 0.08


def visible_objects(r: Rendered) -> list[int]:
    return [i for i in range(len(r.scene.objects)) if r.areas[i] > 0]


def select(r: Rendered, color=None, shape=None, size=None) -> list[int]:
    out = []
    for i in visible_objects(r):
        o = r.scene.objects[i]
        if (color is None or o.color == color) and (shape is None or o.shape == shape) and (
            size is None or o.size == size
        ):
            out.append(i)
    return out


def relation_holds(r: Rendered, i: int, rel: str, j: int) -> bool:
    m = REL_MARGIN * r.size
    (xi, yi), (xj, yj) = r.centroids[i], r.centroids[j]
    if rel == "left of":
        return xi + m < xj
    if rel == "right of":
        return xi > xj + m
    if rel == "above":
        return yi + m < yj
    if rel == "below":
        return yi > yj + m
    raise ValueError(f"unknown relation {rel!r}")


def holds(fact: tuple, r: Rendered) -> bool:
    kind = fact[0]
    if kind == "not":
        return not holds(fact[1], r)
    if kind == "count":
        _, c, s, z, n = fact
        return len(select(r, c, s, z)) == n
    if kind == "atleast":
        _, c, s, z, n = fact
        return len(select(r, c, s, z)) >= n
    if kind == "rel":
        _, (c1, s1), rel, (c2, s2) = fact
        a, b = select(r, c1, s1), select(r, c2, s2)
        return len(a) == 1 and len(b) == 1 and relation_holds(r, a[0], rel, b[0])
    raise ValueError(f"unknown fact {fact!r}")


def all_hold(facts, r: Rendered) -> bool:
    return all(holds(f, r) for f in facts)


def fact_pairs(fact: tuple) -> list[tuple[str | None, str | None]]:
    """Every (color, shape) a fact names, to keep held-out compositions out of training text."""
    kind = fact[0]
    if kind == "not":
        return fact_pairs(fact[1])
    if kind in ("count", "atleast"):
        return [(fact[1], fact[2])]
    if kind == "rel":
        return [fact[1], fact[3]]
    return []
