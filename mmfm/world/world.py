"""`World`: seeded, random-access access to every split and task of the Shapes world.

Sample `index` of split `split` is drawn from its own generator, seeded by (seed, split, index), so
any sample can be made alone, in any order, in any worker, and the same seed gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmfm.errors import ConfigError
from mmfm.world.annotate import Annotations, Annotator
from mmfm.world.concepts import concept_scene
from mmfm.world.facts import select
from mmfm.world.scene import (
    Rendered,
    Scene,
    object_mask,
    render,
    sample_background,
    sample_object,
    sample_scene,
    too_near,
)
from mmfm.world.vocab import (
    ALL_PAIRS,
    CONCEPT_NAMES,
    HELD_OUT_PAIRS,
    SEEN_PAIRS,
    UNSEEN_PAIRS,
    article,
    number_word,
    plural,
)

# train: seen compositions only. val/test: seen compositions in new scenes. heldout: every scene holds
# at least one held-out composition. concepts: one composite concept per scene (evaluation only).
SPLITS = {"train": 0, "val": 1, "test": 2, "heldout": 3, "concepts": 4}
APART_PX = 2  # World(apart=True): background pixels kept between objects of one colour, at 64 px

# Nonsense words for the few-shot "new names" task: only the demonstrations say what they mean.
NEW_WORDS = ("dax", "wug", "blicket", "toma", "fep", "zup", "kiki", "gazzer", "modi", "tufa")


@dataclass
class Sample:
    rendered: Rendered
    ann: Annotations
    split: str
    index: int

    @property
    def image(self):
        return self.rendered.pil()


@dataclass
class Episode:
    """Interleaved few-shot episode: demonstrations (image, prompt, answer) then a query."""

    task: str
    demos: list[tuple[Rendered, str, str]]
    query: tuple[Rendered, str, str]
    mapping: dict = field(default_factory=dict)  # new_names: color -> word


@dataclass
class Statement:
    """Two images and a statement about them with its truth value (NLVR style)."""

    left: Rendered
    right: Rendered
    text: str
    label: bool
    spec: dict


class World:
    def __init__(self, seed: int = 0, size: int = 64, min_objects: int = 1, max_objects: int = 5, rotate: bool = True,
                 apart: bool = False):
        """`apart`: objects of one colour never touch (APART_PX pixels between them at 64 px), so every
        count can be read by eye; by default same-coloured objects may overlap into one blob (most scenes
        with 3 or more of a kind), and the world's recorded runs all use that default."""
        if size < 16:
            raise ConfigError(f"world image size must be >= 16 px, got {size}")
        if not 1 <= min_objects <= max_objects <= 12:
            raise ConfigError(f"need 1 <= min_objects <= max_objects <= 12, got {min_objects}, {max_objects}")
        self.seed, self.size = int(seed), int(size)
        self.min_objects, self.max_objects, self.rotate, self.apart = min_objects, max_objects, rotate, bool(apart)
        self._annotators = {k: Annotator(self.pairs(k)) for k in SPLITS}

    # -------------------------------------------------------------------------------- basics
    @staticmethod
    def pairs(split: str) -> tuple[tuple[str, str], ...]:
        """The (color, shape) compositions a split's scenes and texts may use."""
        _check_split(split)
        return SEEN_PAIRS if split in ("train", "val", "test") else ALL_PAIRS

    def rng(self, split: str, index: int, stream: int = 0) -> np.random.Generator:
        _check_split(split)
        return np.random.default_rng([self.seed, SPLITS[split], int(index), stream])

    def scene(self, split: str, index: int) -> Scene:
        rng = self.rng(split, index)
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        if split == "concepts":
            return concept_scene(rng, CONCEPT_NAMES[index % len(CONCEPT_NAMES)])
        apart = APART_PX if self.apart else 0
        scene = sample_scene(rng, n, self.pairs(split), check_size=64, rotate=self.rotate, apart=apart)
        if split == "heldout" and not any((o.color, o.shape) in HELD_OUT_PAIRS for o in scene.objects):
            # put one held-out composition on top, so every heldout scene has one
            c, s = UNSEEN_PAIRS[rng.integers(len(UNSEEN_PAIRS))]
            obj = sample_object(rng, c, s, rotate=self.rotate)
            objects = scene.objects
            if apart:  # it goes where no object of its colour is near, or those objects make way for it
                full = [object_mask(o, 64) for o in objects]
                for _ in range(25):
                    near = too_near(object_mask(obj, 64), c, full, objects, apart)
                    if not near:
                        break
                    obj = sample_object(rng, c, s, rotate=self.rotate)
                else:  # the last draw is kept whatever it is near
                    near = too_near(object_mask(obj, 64), c, full, objects, apart)
                objects = tuple(o for i, o in enumerate(objects) if i not in near)
            scene = Scene(objects + (obj,), scene.background, scene.seed)
        return scene

    def sample(self, split: str, index: int) -> Sample:
        """One scene with every annotation."""
        r = render(self.scene(split, index), self.size)
        return Sample(r, self._annotators[split](r, self.rng(split, index, 1)), split, index)

    def captioned(self, split: str, index: int):
        """A scene and only its captions (annotate.Caption, with their kinds): the cheap path for
        contrastive training (the same captions as `sample(split, index).ann.captions`)."""
        r = render(self.scene(split, index), self.size)
        return r, self._annotators[split].captions_only(r, self.rng(split, index, 1))

    # -------------------------------------------------------------------------------- tasks
    def classification(self, split: str, index: int) -> tuple[Rendered, int]:
        """One object on a background; label indexes `ALL_PAIRS` (class_names()). heldout gives only
        held-out compositions, train/val/test only seen ones."""
        rng = self.rng(split, index, 2)
        pairs = UNSEEN_PAIRS if split == "heldout" else self.pairs(split)
        c, s = pairs[rng.integers(len(pairs))]
        obj = sample_object(rng, c, s, rotate=self.rotate)
        scene = Scene((obj,), sample_background(rng), int(rng.integers(2**31)))
        return render(scene, self.size), ALL_PAIRS.index((c, s))

    def concept(self, index: int) -> tuple[Rendered, int]:
        """A composite concept scene; label indexes CONCEPT_NAMES."""
        k = index % len(CONCEPT_NAMES)
        return render(concept_scene(self.rng("concepts", index), CONCEPT_NAMES[k]), self.size), k

    def episode(self, split: str, index: int, task: str = "color", shots: int = 4) -> Episode:
        """Few-shot episode of `shots` demonstrations and one query. Tasks: color, shape, count,
        caption, new_names (colors get new names that only the demonstrations define)."""
        rng = self.rng(split, index, 3)
        pairs = self.pairs(split)
        single = task in ("color", "shape", "new_names")
        mapping = {}
        if task == "new_names":
            words = rng.permutation(len(NEW_WORDS))
            mapping = {c: NEW_WORDS[w] for c, w in zip(sorted({p[0] for p in pairs}), words)}

        def item(k: int, force_color=None):
            if single:
                c, s = pairs[rng.integers(len(pairs))]
                if force_color is not None:
                    c, s = (
                        force_color,
                        [p for p in pairs if p[0] == force_color][
                            rng.integers(1_000) % sum(p[0] == force_color for p in pairs)
                        ][1],
                    )
                obj = sample_object(rng, c, s, rotate=self.rotate)
                r = render(Scene((obj,), sample_background(rng), int(rng.integers(2**31))), self.size)
            else:
                scene = sample_scene(rng, int(rng.integers(1, self.max_objects + 1)), pairs, rotate=self.rotate,
                                     apart=APART_PX if self.apart else 0)
                r = render(scene, self.size)
                c, s = None, None
            if task == "color":
                return r, "Question: What color is the object? Short answer:", c
            if task == "shape":
                return r, "Question: What shape is the object? Short answer:", s
            if task == "new_names":
                return r, "Output:", mapping[c]
            if task == "count":
                return r, "Question: How many objects are there? Short answer:", str(len(select(r)))
            if task == "caption":
                ann = self._annotators[split](r, rng)
                return r, "Output:", ann.captions[0].text
            raise ConfigError(f"unknown episode task {task!r}; use color, shape, count, caption or new_names")

        query = item(shots)
        demos = [item(k) for k in range(shots)]
        if task == "new_names" and shots and not any(d[2] == query[2] for d in demos):
            # the query's word must be defined by at least one demonstration
            color = next(c for c, w in mapping.items() if w == query[2])
            demos[int(rng.integers(shots))] = item(0, force_color=color)
        return Episode(task, demos, query, mapping)

    def statement(self, split: str, index: int) -> Statement:
        """Two scenes and a true-or-false statement about them (counts, colors, existence)."""
        rng = self.rng(split, index, 4)
        pairs = self.pairs(split)
        left = render(self.scene(split, 2 * index), self.size)
        right = render(self.scene(split, 2 * index + 1), self.size)
        want = bool(rng.random() < 0.5)
        text, spec, label = "", {}, False
        for _ in range(20):  # draw statements until the label is the one wanted (balanced labels)
            text, spec, label = _statement(rng, left, right, pairs)
            if label == want:
                break
        return Statement(left, right, text, label, spec)


def _statement(rng, left: Rendered, right: Rendered, pairs):
    c, s = pairs[rng.integers(len(pairs))]
    kind = ("more", "both", "total", "side", "neither")[rng.integers(5)]
    nl, nr = len(select(left, None, s)), len(select(right, None, s))
    if kind == "more":
        return f"The left image has more {plural(s, 2)} than the right image.", {"kind": kind, "shape": s}, nl > nr
    if kind == "both":
        if rng.random() < 0.5:
            label = bool(select(left, c, None)) and bool(select(right, c, None))
            return f"Both images contain {article(c)} {c} object.", {"kind": kind, "color": c}, label
        label = bool(select(left, c, s)) and bool(select(right, c, s))
        return f"Both images contain {article(c)} {c} {s}.", {"kind": kind, "color": c, "shape": s}, label
    if kind == "total":
        n = int(rng.integers(0, 4)) if rng.random() < 0.5 else nl + nr
        return (
            f"There are exactly {number_word(n)} {plural(s, n)} in total.",
            {"kind": kind, "shape": s, "n": n},
            nl + nr == n,
        )
    if kind == "side":
        side = ("left", "right")[rng.integers(2)]
        img = left if side == "left" else right
        return (
            f"The {side} image contains {article(c)} {c} {s}.",
            {"kind": kind, "side": side, "color": c, "shape": s},
            bool(select(img, c, s)),
        )
    return f"Neither image contains {article(s)} {s}.", {"kind": kind, "shape": s}, nl == 0 and nr == 0


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
