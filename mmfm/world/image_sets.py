"""Image sets of the Shapes world: a few different scenes asked about together, with the ground truth
of each (mmfm.world.World scenes, so the held-out split keeps its unseen compositions).

Two layouts of the same set, as Molmo2 takes them:
- "images": several images ("Image 1", "Image 2", ...). Tasks: pointing at an X in image k (points in
  Molmo2's multi-image markup, the image index first); and for the two kinds of object first asked
  about: pointing at every one in all the images, which image has the most, how many in all the images.
- "video": the scenes as the frames of a video, one every 1/fps seconds (a slideshow). Task: pointing
  at an X at a given time. Unlike a clip, whose frames differ little, each frame here is a different
  scene, so writing any other frame's place is wrong: it teaches reading the frame the time names.
- "moved" (`moved_set`): one scene shown frame after frame, its objects at new places in every frame
  after the first. The same tasks as "video", but the object asked about is in every frame, each time
  elsewhere: what a clip asks of a time, without the motion that makes neighbouring frames alike; and
  tracking the first frame's first object (a point on every frame, in the clips' track markup).

`image_set(seed, split, index)` is a pure function of its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mmfm.errors import ConfigError
from mmfm.world.annotate import interior_points
from mmfm.world.facts import select
from mmfm.world.scene import Rendered, Scene, render
from mmfm.world.vocab import NUMBER_WORDS, PLURAL, plural
from mmfm.world.world import World

LAYOUTS = ("images", "video", "moved")
OFFSET = 1_000_000  # set scenes come from this far into a split, apart from the scenes used one at a time


@dataclass
class ImageSet:
    scenes: list[Rendered]
    split: str
    index: int
    fps: float = 2.0

    @property
    def size(self) -> int:
        return self.scenes[0].size

    def time(self, k: int) -> float:
        """The time of scene k (0-based) when the set is shown as a video."""
        return round(k / self.fps, 1)


def image_set(seed: int, split: str, index: int, n: int = 4, size: int = 64, fps: float = 2.0,
              world: World | None = None) -> ImageSet:
    """`n` scenes of `split` (World(seed, size) scenes OFFSET + index * n ... + n - 1)."""
    if n < 1:
        raise ConfigError(f"an image set needs at least one image, got {n}")
    world = world or World(seed=seed, size=size)
    first = OFFSET + index * n
    return ImageSet([world.sample(split, first + k).rendered for k in range(n)], split, index, fps)


def moved_set(seed: int, split: str, index: int, n: int = 8, size: int = 64, fps: float = 2.0,
              world: World | None = None) -> ImageSet:
    """World scene OFFSET + index of `split` shown `n` times: the same objects (colours, shapes, sizes,
    depth order) and background, every object at a new place in each frame after the first."""
    if n < 1:
        raise ConfigError(f"a moved set needs at least one frame, got {n}")
    world = world or World(seed=seed, size=size)
    scene = world.scene(split, OFFSET + index)
    rng = world.rng(split, OFFSET + index, 2)
    frames = [scene]
    for _ in range(1, n):
        objects = tuple(replace(o, x=float(rng.uniform(o.r, 1 - o.r)), y=float(rng.uniform(o.r, 1 - o.r)))
                        for o in scene.objects)
        frames.append(Scene(objects, scene.background, scene.seed, scene.tags))
    return ImageSet([render(f, size) for f in frames], split, index, fps)


def check_layouts(layouts) -> tuple[str, ...]:
    """Some of LAYOUTS, at least one, else a ConfigError."""
    layouts = tuple(layouts)
    if not layouts or any(v not in LAYOUTS for v in layouts):
        raise ConfigError(f"image-set layouts must be some of {', '.join(LAYOUTS)}, got {layouts!r}")
    return layouts


def _number(k: int) -> str:
    return NUMBER_WORDS[k] if k < len(NUMBER_WORDS) else str(k)


def set_tasks(s: ImageSet, layout: str = "images") -> list[dict]:
    """Question, ground truth and kind of every task the set supports in `layout`. Pointing tasks carry
    "points": [(image k 0-based, object, x, y)] and "label"; the others an "answer"."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown image-set layout {layout!r}; known: {', '.join(LAYOUTS)}")
    pts = [interior_points(r) for r in s.scenes]
    tasks = []
    for k, r in enumerate(s.scenes):  # one object kind per image, the first visible object's
        vis = select(r)
        if not vis:
            continue
        o = r.scene.objects[vis[0]]
        idx = select(r, o.color, o.shape)
        label = f"{o.color} {plural(o.shape, len(idx))}"
        where = f"in image {k + 1}" if layout == "images" else f"at {s.time(k)} s"  # video, moved: a time
        tasks.append({"task": "point_in", "question": f"Point to the {label} {where}.", "image": k, "label": label,
                      "points": [(k, i, *map(float, pts[k][i])) for i in idx]})
    first = s.scenes[0]
    named = [i for i in select(first) if len(select(first, first.scene.objects[i].color,
                                                     first.scene.objects[i].shape)) == 1] if layout == "moved" else []
    if named:
        # the first frame's first object its colour and shape name alone: a point on every frame where it
        # is visible, each frame elsewhere, so a track that repeats one place scores about 1/n (a clip's
        # track can stay near its object)
        i, o = named[0], first.scene.objects[named[0]]
        tasks.append({"task": "track", "question": f"Track the {o.color} {o.shape}.", "object": i,
                      "label": f"{o.color} {o.shape}",
                      "points": [(k, i, *map(float, pts[k][i])) for k in range(len(s.scenes))
                                 if not np.isnan(pts[k][i, 0])]})
    if layout != "images":
        return tasks
    shapes = []  # the kinds asked about in the first two images: a few questions per set, not one per shape
    for t in tasks:
        shape = s.scenes[t["image"]].scene.objects[t["points"][0][1]].shape
        if shape not in shapes and len(shapes) < 2:
            shapes.append(shape)
    for shape in shapes:
        per = [select(r, shape=shape) for r in s.scenes]
        counts = [len(p) for p in per]
        tasks.append({"task": "point_every", "question": f"Point to every {shape} in the images.",
                      "label": PLURAL[shape], "shape": shape,
                      "points": [(k, i, *map(float, pts[k][i])) for k, p in enumerate(per) for i in p]})
        tasks.append({"task": "count_all", "question": f"How many {PLURAL[shape]} are there in all the images?",
                      "answer": _number(sum(counts)), "count": sum(counts), "shape": shape})
        if len(s.scenes) > 1 and counts.count(max(counts)) == 1:
            tasks.append({"task": "most", "question": f"Which image has the most {PLURAL[shape]}?",
                          "answer": f"image {int(np.argmax(counts)) + 1}", "shape": shape})
    return tasks


__all__ = ["ImageSet", "image_set", "moved_set", "set_tasks", "check_layouts", "LAYOUTS", "OFFSET"]
