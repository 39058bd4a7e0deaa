"""The world's own compositionality suite: for new scenes, the true caption against a hard negative
of each kind, scored as SugarCREPE / ARO do (strict >):

  attribute_swap  "a blue circle and a yellow square" vs "a yellow circle and a blue square"
  relation_swap   "a yellow square to the right of a pink hexagon" vs the two objects exchanged
  replace         "a red triangle" vs "an orange triangle" (a color or shape absent from the scene)
  word_order      a relation caption vs its nouns and adjectives shuffled (ARO's order test)
The negatives are exact: the scene graph says they are false (mmfm.world.annotate)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from mmfm.text.perturb import shuffle_nouns_adjectives
from mmfm.world import World

KINDS = ("attribute_swap", "relation_swap", "replace", "word_order")


def world_items(n: int = 500, split: str = "test", seed: int = 0, offset: int = 200_000):
    """Up to n (image, positive, negative) items per kind."""
    world = World(seed=seed)
    items: dict[str, list] = defaultdict(list)
    i = offset
    while min(len(items[k]) for k in KINDS) < n and i < offset + 40 * n:
        s = world.sample(split, i)
        i += 1
        for neg in s.ann.negatives:
            if len(items[neg.kind]) < n:
                items[neg.kind].append((s.rendered.image, neg.positive, neg.text))
            if neg.kind == "relation_swap" and len(items["word_order"]) < n:
                shuffled = shuffle_nouns_adjectives(neg.positive, np.random.default_rng([seed, i]))
                if shuffled is not None and shuffled != neg.text:
                    items["word_order"].append((s.rendered.image, neg.positive, shuffled))
    return items


def world_suite(scorer, n: int = 500, split: str = "test", seed: int = 0, items: dict | None = None) -> dict:
    """Accuracy per kind (strict >). `items` (from world_items) skips regenerating the scenes."""
    from PIL import Image

    out = {}
    for kind, rows in (items or world_items(n, split, seed)).items():
        correct = []
        for img, pos, neg in rows:
            s = scorer([Image.fromarray(img)], [pos, neg])[0]
            correct.append(bool(s[0] > s[1]))
        out[kind] = {"accuracy": float(np.mean(correct)) if correct else float("nan"), "n": len(correct)}
    return out


__all__ = ["world_suite", "world_items", "KINDS"]
