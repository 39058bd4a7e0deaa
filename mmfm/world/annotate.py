"""Ground truth in words for a rendered scene: captions of varied granularity, region captions, QA
pairs, Molmo points and hard-negative captions. Every sentence carries the facts it asserts
(mmfm.world.facts), and a generator never emits a sentence naming a composition outside `pairs`, so
the training split cannot leak held-out compositions through text."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mmfm.text.pointing import count_answer, format_points
from mmfm.world.facts import all_hold, fact_pairs, relation_holds, select, visible_objects
from mmfm.world.scene import Rendered
from mmfm.world.vocab import (
    COLOR_NAMES,
    INVERSE_RELATION,
    RELATIONS,
    SHAPES,
    article,
    number_word,
    plural,
)

REL_PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


@dataclass
class Caption:
    text: str
    kind: str  # listing | object | attribute | total | relation
    facts: tuple


@dataclass
class QA:
    question: str
    answer: str
    kind: str  # count | color | shape | existence | relation
    facts: tuple  # what holds when the answer is right


@dataclass
class Negative:
    text: str  # false of the scene
    positive: str  # the true sentence it was made from
    kind: str  # attribute_swap | relation_swap | replace
    facts: tuple  # the negative's own claims: at least one of them fails


@dataclass
class PointQuery:
    query: str  # e.g. "red circles"
    points: list  # [(x, y)] pixel coordinates, one per matching object
    answer: str  # Molmo markup
    count_answer: str


@dataclass
class Annotations:
    captions: list[Caption] = field(default_factory=list)
    regions: list[tuple[str, list[int]]] = field(default_factory=list)  # (caption, XYXY box)
    qa: list[QA] = field(default_factory=list)
    negatives: list[Negative] = field(default_factory=list)
    points: list[PointQuery] = field(default_factory=list)
    relations: list[tuple[int, str, int]] = field(default_factory=list)  # (i, relation, j), object indices

    def texts(self) -> list[str]:
        """Every string a model could be trained on, for leak checks."""
        out = [c.text for c in self.captions] + [t for t, _ in self.regions]
        out += [q.question for q in self.qa] + [q.answer for q in self.qa]
        out += [n.text for n in self.negatives] + [n.positive for n in self.negatives]
        out += [p.query for p in self.points] + [p.answer for p in self.points]
        return out


def _name(color, shape, size=None) -> str:
    words = [w for w in (size, color, shape) if w]
    return " ".join(words)


def _a(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def interior_points(r: Rendered) -> np.ndarray:
    """(N, 2) pixel (x, y) per object, always on its visible mask: the object's center when it and the
    pixels half a radius around it are visible (the common case, and cheap), else the visible pixel
    deepest inside the mask (nearest the centroid among the deepest), found by erosion."""
    pts = np.full((len(r.scene.objects), 2), np.nan)
    size = r.size
    for i in visible_objects(r):
        o = r.scene.objects[i]
        cx, cy, h = int(o.x * size), int(o.y * size), max(1, int(0.5 * o.r * size))
        probe = [(cx, cy), (cx - h, cy), (cx + h, cy), (cx, cy - h), (cx, cy + h)]
        if all(0 <= x < size and 0 <= y < size and r.masks[i, y, x] for x, y in probe):
            pts[i] = (cx + 0.5, cy + 0.5)
            continue
        x0, y0, x1, y1 = r.boxes[i]
        m = np.pad(r.masks[i, y0 : y1 + 1, x0 : x1 + 1], 1)
        while True:
            e = m.copy()
            e[1:-1, 1:-1] &= m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
            e[0, :] = e[-1, :] = e[:, 0] = e[:, -1] = False
            if not e.any():
                break
            m = e
        ys, xs = np.nonzero(m)
        c = r.centroids[i] - (x0 - 1, y0 - 1)
        k = int(np.argmin((xs - c[0]) ** 2 + (ys - c[1]) ** 2))
        pts[i] = (xs[k] + x0 - 1 + 0.5, ys[k] + y0 - 1 + 0.5)
    return pts


class Annotator:
    """Makes the annotations of one rendered scene. `pairs` is the set of (color, shape) compositions
    text may name (the split's); `rng` drives every choice, so a seed fixes the result."""

    def __init__(self, pairs):
        self.pairs = tuple(pairs)
        self._rel_cands = None
        self.pair_set = frozenset(self.pairs)
        self.colors = tuple(c for c in COLOR_NAMES if any(p[0] == c for p in self.pairs))
        self.shapes = tuple(s for s in SHAPES if any(p[1] == s for p in self.pairs))

    def allowed(self, facts) -> bool:
        for c, s in (p for f in facts for p in fact_pairs(f)):
            if c is not None and s is not None and (c, s) not in self.pair_set:
                return False
        return True

    def __call__(self, r: Rendered, rng: np.random.Generator) -> Annotations:
        vis = visible_objects(r)
        ann = Annotations()
        if not vis:
            ann.captions.append(Caption("an empty background", "total", (("count", None, None, None, 0),)))
            return ann
        objs = r.scene.objects
        self._rel_cands = None  # relation candidates, computed once per scene on first use
        ann.captions = self.captions(r, vis, rng)
        ann.regions = [(_a(_name(objs[i].color, objs[i].shape, objs[i].size)), r.boxes[i].tolist()) for i in vis]
        ann.qa = self.questions(r, vis, rng)
        ann.negatives = self.negatives(r, vis, rng)
        ann.points = self.point_queries(r, vis, rng)
        ann.relations = [
            (i, rel, j) for i in vis for j in vis if i != j for rel in RELATIONS if relation_holds(r, i, rel, j)
        ]
        return ann

    def captions_only(self, r: Rendered, rng: np.random.Generator) -> list[Caption]:
        """The captions of `__call__`, without the other annotations (same rng use, same result)."""
        vis = visible_objects(r)
        if not vis:
            return [Caption("an empty background", "total", (("count", None, None, None, 0),))]
        self._rel_cands = None
        return self.captions(r, vis, rng)

    # ------------------------------------------------------------------------------------ captions
    def captions(self, r: Rendered, vis: list[int], rng) -> list[Caption]:
        objs = r.scene.objects
        groups = Counter((objs[i].color, objs[i].shape) for i in vis)
        caps: list[Caption] = []
        # listing: everything in the scene
        items, facts = [], []
        for (c, s), n in sorted(groups.items(), key=lambda kv: rng.random()):
            sizes = {objs[i].size for i in select(r, c, s)}
            size = next(iter(sizes)) if len(sizes) == 1 and rng.random() < 0.5 else None
            phrase = _name(c, plural(s, n), size)
            items.append(_a(phrase) if n == 1 else f"{number_word(n)} {phrase}")
            facts.append(("count", c, s, None, n))
            if size:
                facts.append(("count", c, s, size, n))
        facts.append(("count", None, None, None, len(vis)))
        prefix = ("", "a picture of ", "an image of ", "a photo of ", "a drawing of ")[rng.integers(5)]
        caps.append(Caption(prefix + _join(items), "listing", tuple(facts)))
        # one object, fully named
        i = vis[rng.integers(len(vis))]
        o = objs[i]
        caps.append(Caption(_a(_name(o.color, o.shape, o.size)), "object", (("atleast", o.color, o.shape, o.size, 1),)))
        caps.append(Caption(_a(_name(o.color, o.shape)), "object", (("atleast", o.color, o.shape, None, 1),)))
        # one attribute only: what makes held-out compositions reachable from their parts
        c_n = Counter(objs[i].color for i in vis)
        s_n = Counter(objs[i].shape for i in vis)
        c = o.color
        n = c_n[c]
        text = f"{article(c)} {c} shape" if n == 1 else f"{number_word(n)} {c} shapes"
        caps.append(Caption(text, "attribute", (("count", c, None, None, n),)))
        s = o.shape
        n = s_n[s]
        text = _a(s) if n == 1 else f"{number_word(n)} {plural(s, n)}"
        caps.append(Caption(text, "attribute", (("count", None, s, None, n),)))
        total = len(vis)
        word = "shape" if total == 1 else "shapes"
        caps.append(Caption(f"{number_word(total)} {word}", "total", (("count", None, None, None, total),)))
        rel = self._relation(r, vis, rng)
        if rel is not None:
            (a, relname, b) = rel
            text = f"{_a(_name(*a))} {REL_PHRASE[relname]} {_a(_name(*b))}"
            caps.append(Caption(text, "relation", (("rel", a, relname, b),)))
        return caps

    def _unique(self, r: Rendered, vis: list[int]) -> list[int]:
        objs = r.scene.objects
        cnt = Counter((objs[i].color, objs[i].shape) for i in vis)
        return [i for i in vis if cnt[(objs[i].color, objs[i].shape)] == 1]

    def _relation(self, r: Rendered, vis, rng):
        """A random clearly-true relation between two uniquely named objects, or None."""
        objs = r.scene.objects
        if self._rel_cands is None:
            uniq = self._unique(r, vis)
            self._rel_cands = [
                (i, rel, j) for i in uniq for j in uniq if i != j for rel in RELATIONS if relation_holds(r, i, rel, j)
            ]
        cands = self._rel_cands
        if not cands:
            return None
        i, rel, j = cands[rng.integers(len(cands))]
        return (objs[i].color, objs[i].shape), rel, (objs[j].color, objs[j].shape)

    # ------------------------------------------------------------------------------------ questions
    def questions(self, r: Rendered, vis, rng) -> list[QA]:
        objs = r.scene.objects
        out: list[QA] = []
        # count, at a random granularity; sometimes about something absent (answer 0)
        o = objs[vis[rng.integers(len(vis))]]
        if rng.random() < 0.2:
            c, s = self.pairs[rng.integers(len(self.pairs))]
        else:
            c, s = o.color, o.shape
        g = rng.integers(4)
        c, s = (c, s) if g == 0 else (None, s) if g == 1 else (c, None) if g == 2 else (None, None)
        n = len(select(r, c, s))
        subject = f"{c} {plural(s, 2)}" if c and s else plural(s, 2) if s else f"{c} objects" if c else "objects"
        out.append(QA(f"How many {subject} are there?", str(n), "count", (("count", c, s, None, n),)))
        # color of a unique shape, shape of a unique color
        s_n = Counter(objs[i].shape for i in vis)
        c_n = Counter(objs[i].color for i in vis)
        shapes = [s for s, k in s_n.items() if k == 1]
        if shapes:
            s = shapes[rng.integers(len(shapes))]
            c = objs[select(r, None, s)[0]].color
            facts = (("count", None, s, None, 1), ("count", c, s, None, 1))
            out.append(QA(f"What color is the {s}?", c, "color", facts))
        colors = [c for c, k in c_n.items() if k == 1]
        if colors:
            c = colors[rng.integers(len(colors))]
            s = objs[select(r, c, None)[0]].shape
            facts = (("count", c, None, None, 1), ("count", c, s, None, 1))
            out.append(QA(f"What shape is the {c} object?", s, "shape", facts))
        # existence, balanced yes/no
        if rng.random() < 0.5:
            c, s = o.color, o.shape
        else:
            absent = [p for p in self.pairs if not select(r, *p)]
            c, s = absent[rng.integers(len(absent))] if absent else (o.color, o.shape)
        fact = ("atleast", c, s, None, 1)
        yes = bool(select(r, c, s))
        out.append(
            QA(f"Is there {_a(_name(c, s))}?", "yes" if yes else "no", "existence", (fact if yes else ("not", fact),))
        )
        # relation, balanced yes/no
        rel = self._relation(r, vis, rng)
        if rel is not None:
            a, relname, b = rel
            ask = relname if rng.random() < 0.5 else INVERSE_RELATION[relname]
            fact = ("rel", a, ask, b)
            yes = ask == relname
            q = f"Is the {_name(*a)} {REL_PHRASE[ask]} the {_name(*b)}?"
            out.append(QA(q, "yes" if yes else "no", "relation", (fact if yes else ("not", fact),)))
        return out

    # ------------------------------------------------------------------------------------ negatives
    def negatives(self, r: Rendered, vis, rng) -> list[Negative]:
        objs = r.scene.objects
        out: list[Negative] = []
        # attribute swap between two objects that differ in both color and shape
        pairs = [
            (i, j)
            for i in vis
            for j in vis
            if i < j and objs[i].color != objs[j].color and objs[i].shape != objs[j].shape
        ]
        rng.shuffle(pairs)
        for i, j in pairs:
            a, b = objs[i], objs[j]
            facts = (("atleast", b.color, a.shape, None, 1), ("atleast", a.color, b.shape, None, 1))
            if self.allowed(facts) and not all_hold(facts, r):
                pos = f"{_a(_name(a.color, a.shape))} and {_a(_name(b.color, b.shape))}"
                neg = f"{_a(_name(b.color, a.shape))} and {_a(_name(a.color, b.shape))}"
                out.append(Negative(neg, pos, "attribute_swap", facts))
                break
        # relation swap: the same words, the two objects exchanged
        rel = self._relation(r, vis, rng)
        if rel is not None:
            a, relname, b = rel
            pos = f"{_a(_name(*a))} {REL_PHRASE[relname]} {_a(_name(*b))}"
            neg = f"{_a(_name(*b))} {REL_PHRASE[relname]} {_a(_name(*a))}"
            out.append(Negative(neg, pos, "relation_swap", (("rel", b, relname, a),)))
        # replacement of the color or the shape of one object by one absent from the scene
        o = objs[vis[rng.integers(len(vis))]]
        if rng.random() < 0.5:
            options = [(c, o.shape) for c in self.colors if c != o.color]
        else:
            options = [(o.color, s) for s in self.shapes if s != o.shape]
        options = [p for p in options if p in self.pair_set and not select(r, *p)]
        if options:
            c, s = options[rng.integers(len(options))]
            out.append(Negative(_a(_name(c, s)), _a(_name(o.color, o.shape)), "replace", (("atleast", c, s, None, 1),)))
        return out

    # ------------------------------------------------------------------------------------ points
    def point_queries(self, r: Rendered, vis, rng) -> list[PointQuery]:
        objs = r.scene.objects
        pts = interior_points(r)
        o = objs[vis[rng.integers(len(vis))]]
        out = []
        for c, s in ((o.color, o.shape), (None, o.shape), (o.color, None)):
            idx = select(r, c, s)
            query = f"{c} {plural(s, len(idx))}" if c and s else plural(s, len(idx)) if s else f"{c} objects"
            p = [tuple(pts[i]) for i in idx]
            out.append(
                PointQuery(query, p, format_points(p, r.size, r.size, query), count_answer(p, r.size, r.size, query))
            )
        return out
