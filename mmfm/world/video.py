"""Videos of the Shapes world: objects that move, bounce, enter and leave the frame, occlude and touch
each other, with the ground truth of every frame (visible masks, boxes, centroids, identities) and the
events with their times. `clip(seed, split, index)` is a pure function of its arguments.

Motion: each object waits until its start frame, then moves at a constant velocity (fractions of the
side per frame); a bouncing object reflects off the borders, the others may come in from outside the
frame or leave it. Depth order is fixed (later objects are drawn on top), so occlusion is exact.

Tasks made from the ground truth (`video_tasks`): counting distinct objects over the whole clip, which
moved first, the colour of the one that leaves, where an object ends, whether two ever touch, pointing
at every X when it appears, tracking one object (a point on every frame where it is visible), and pointing
at one object at a given time (the frame where it is farthest from where it was first seen).
Held-out: the `heldout` split puts a held-out colour x shape composition in every clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmfm.errors import ConfigError
from mmfm.world.scene import Obj, Scene, mask_stats, render, sample_background, sample_object
from mmfm.world.vocab import HELD_OUT_PAIRS, NUMBER_WORDS, PLURAL, SEEN_PAIRS, UNSEEN_PAIRS

VIDEO_SPLITS = {"train": 10, "val": 11, "test": 12, "heldout": 13}
MIN_PIXELS = 6  # at the rendered size: a sliver smaller than this does not count as "visible"


@dataclass(frozen=True)
class Mover:
    obj: Obj  # its x, y are the position at frame 0 (may lie outside 0..1: it enters later)
    vx: float
    vy: float
    start: int  # the frame it starts moving
    bounce: bool

    def position(self, t: int) -> tuple[float, float]:
        s = max(0, t - self.start)
        x, y = self.obj.x + self.vx * s, self.obj.y + self.vy * s
        if self.bounce:
            x, y = _reflect(x, self.obj.r), _reflect(y, self.obj.r)
        return x, y


def _reflect(v: float, r: float) -> float:
    lo, hi = r, 1 - r
    span = hi - lo
    u = (v - lo) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


@dataclass
class Clip:
    movers: tuple[Mover, ...]
    size: int
    fps: float
    frames: np.ndarray  # (F, S, S, 3) uint8
    masks: np.ndarray  # (F, N, S, S) bool, visible part of each object
    full: np.ndarray  # (F, N, S, S) bool, whole object (inside the frame)
    centroids: np.ndarray  # (F, N, 2) x, y pixels of the visible part (nan when not visible)
    points: np.ndarray  # (F, N, 2) the visible pixel nearest the centroid: always inside the mask
    boxes: np.ndarray  # (F, N, 4) XYXY inclusive
    visible: np.ndarray  # (F, N) bool
    events: list[dict]

    @property
    def names(self) -> list[str]:
        return [m.obj.name for m in self.movers]

    def time(self, frame: int) -> float:
        return round(frame / self.fps, 1)


def sample_movers(rng: np.random.Generator, n: int, pairs, frames: int) -> list[Mover]:
    out = []
    starts = rng.permutation(max(frames // 2, n))[:n]  # distinct start frames: "which moved first" has an answer
    for i in range(n):
        color, shape = pairs[rng.integers(len(pairs))]
        obj = sample_object(rng, color, shape, size=("small", "large")[rng.integers(2)])
        kind = rng.choice(["bounce", "enter", "leave"], p=[0.5, 0.25, 0.25])
        speed = float(rng.uniform(0.03, 0.07))
        angle = float(rng.uniform(0, 2 * np.pi))
        vx, vy = speed * np.cos(angle), speed * np.sin(angle)
        x, y = obj.x, obj.y
        start = int(starts[i])
        if kind == "enter":  # from just outside the left or right border, inwards, from frame 0
            side = rng.integers(2)
            x, vx = (-obj.r * 1.2, abs(vx) + 0.04) if side == 0 else (1 + obj.r * 1.2, -abs(vx) - 0.04)
            start = 0
        elif kind == "leave":  # fast enough to be out before the end
            vx = (0.09 if x > 0.5 else -0.09) + 0.01 * np.sign(vx)
            vy = 0.0
        out.append(Mover(Obj(obj.shape, obj.color, obj.size, float(x), float(y), obj.r, obj.rotation, obj.rgb),
                         float(vx), float(vy), start, kind == "bounce"))
    return out


def render_clip(movers, frames: int, size: int, fps: float, background, seed: int) -> Clip:
    n = len(movers)
    imgs = np.zeros((frames, size, size, 3), np.uint8)
    masks = np.zeros((frames, n, size, size), bool)
    full = np.zeros_like(masks)
    for t in range(frames):
        objs = []
        for m in movers:
            x, y = m.position(t)
            objs.append(Obj(m.obj.shape, m.obj.color, m.obj.size, x, y, m.obj.r, m.obj.rotation, m.obj.rgb))
        r = render(Scene(tuple(objs), background, seed), size)  # the same seed: the same texture each frame
        imgs[t], masks[t], full[t] = r.image, r.masks, r.full_masks
    cents = np.full((frames, n, 2), np.nan)
    boxes = np.zeros((frames, n, 4), np.int64)
    for t in range(frames):
        boxes[t], cents[t], _ = mask_stats(masks[t])
    visible = masks.reshape(frames, n, -1).sum(-1) >= MIN_PIXELS
    cents[~visible] = np.nan
    points = np.full_like(cents, np.nan)
    for t, i in zip(*np.nonzero(visible)):
        ys, xs = np.nonzero(masks[t, i])
        k = np.argmin((xs - cents[t, i, 0]) ** 2 + (ys - cents[t, i, 1]) ** 2)
        points[t, i] = xs[k], ys[k]
    clip = Clip(tuple(movers), size, fps, imgs, masks, full, cents, points, boxes, visible, [])
    clip.events = events(clip)
    return clip


def events(clip: Clip) -> list[dict]:
    """appears / leaves / starts / touches / overtakes, each with its frame and time."""
    out = []
    f, n = clip.visible.shape
    for i, m in enumerate(clip.movers):
        seen = np.nonzero(clip.visible[:, i])[0]
        if len(seen):
            out.append({"event": "appears", "object": i, "frame": int(seen[0])})
            if seen[-1] < f - 1:
                out.append({"event": "leaves", "object": i, "frame": int(seen[-1] + 1)})
        if m.start < f:
            out.append({"event": "starts moving", "object": i, "frame": m.start})
    grown = clip.full.copy()  # touching: the whole shapes overlap once grown by a pixel
    grown[..., 1:, :] |= clip.full[..., :-1, :]
    grown[..., :, 1:] |= clip.full[..., :, :-1]
    for i in range(n):
        for j in range(i + 1, n):
            touch = np.nonzero((grown[:, i] & clip.full[:, j]).reshape(f, -1).any(-1))[0]
            if len(touch):
                out.append({"event": "touches", "object": i, "other": j, "frame": int(touch[0])})
            both = clip.visible[:, i] & clip.visible[:, j]
            dx = clip.centroids[:, i, 0] - clip.centroids[:, j, 0]
            for t in range(1, f):
                if both[t] and both[t - 1] and np.sign(dx[t]) != np.sign(dx[t - 1]):
                    a, b = (i, j) if abs(clip.movers[i].vx) > abs(clip.movers[j].vx) else (j, i)
                    out.append({"event": "overtakes", "object": a, "other": b, "frame": t})
                    break
    for e in out:
        e["time"] = clip.time(e["frame"])
    return sorted(out, key=lambda e: (e["frame"], e["event"], e["object"]))


def clip(seed: int, split: str, index: int, frames: int = 8, size: int = 64, fps: float = 2.0,
         objects: tuple[int, int] = (2, 4)) -> Clip:
    """One world video; deterministic in (seed, split, index)."""
    if split not in VIDEO_SPLITS:
        raise ConfigError(f"video split {split!r}: use one of {', '.join(VIDEO_SPLITS)}")
    rng = np.random.default_rng([seed, VIDEO_SPLITS[split], index])
    n = int(rng.integers(objects[0], objects[1] + 1))
    movers = sample_movers(rng, n, SEEN_PAIRS, frames)
    if split == "heldout" and not any((m.obj.color, m.obj.shape) in HELD_OUT_PAIRS for m in movers):
        movers[-1:] = sample_movers(rng, 1, UNSEEN_PAIRS, frames)
    return render_clip(movers, frames, size, fps, sample_background(rng), int(rng.integers(2**31)))


# ------------------------------------------------------------------------------------------- tasks
def _xy(p) -> tuple[float, float]:
    return round(float(p[0]), 2), round(float(p[1]), 2)


def _where(x: float, y: float, size: int) -> str:
    col = ("left", "", "right")[min(2, int(3 * x / size))]
    row = ("top", "", "bottom")[min(2, int(3 * y / size))]
    return " ".join(p for p in (row, col) if p) or "center"


TASK_KINDS = ("count", "point", "first_move", "touch", "leaves_color", "end_position", "track", "point_at")


def video_tasks(c: Clip) -> list[dict]:
    """Question, answer, kind and the ground truth behind it, for every task the clip supports."""
    names, shapes = c.names, [m.obj.shape for m in c.movers]
    seen = c.visible.any(0)
    unique = [i for i, nm in enumerate(names) if names.count(nm) == 1 and seen[i]]
    tasks = []
    for shape in sorted(set(shapes)):
        k = sum(1 for i, s in enumerate(shapes) if s == shape and seen[i])
        tasks.append({"task": "count", "question": f"How many {PLURAL[shape]} appear in the video?",
                      "answer": NUMBER_WORDS[k] if k < len(NUMBER_WORDS) else str(k), "count": k,
                      "shape": shape})
        appear = [(e["frame"], e["object"]) for e in c.events
                  if e["event"] == "appears" and shapes[e["object"]] == shape]
        points = [(c.time(t), i, *_xy(c.points[t, i])) for t, i in appear]
        tasks.append({"task": "point", "question": f"Point to every {shape} when it appears.", "points": points,
                      "shape": shape})
    if len(unique) >= 2 and c.movers[unique[0]].start != c.movers[unique[1]].start:
        a, b = unique[0], unique[1]
        first = a if c.movers[a].start < c.movers[b].start else b
        tasks.append({"task": "first_move", "question": f"Which moves first, the {names[a]} or the {names[b]}?",
                      "answer": f"the {names[first]}"})
        touched = any(e["event"] == "touches" and {e["object"], e["other"]} == {a, b} for e in c.events)
        tasks.append({"task": "touch", "question": f"Did the {names[a]} ever touch the {names[b]}?",
                      "answer": "yes" if touched else "no"})
    for shape in sorted(set(shapes)):
        leavers = [e["object"] for e in c.events if e["event"] == "leaves" and shapes[e["object"]] == shape]
        if len(leavers) == 1:
            tasks.append({"task": "leaves_color", "question": f"What color is the {shape} that leaves?",
                          "answer": c.movers[leavers[0]].obj.color})
    for i in unique:
        if c.visible[-1, i]:
            x, y = c.points[-1, i]
            tasks.append({"task": "end_position", "question": f"Where is the {names[i]} at the end?",
                          "answer": _where(x, y, c.size)})
        track = [(c.time(t), i, *_xy(c.points[t, i])) for t in range(len(c.frames)) if c.visible[t, i]]
        tasks.append({"task": "track", "question": f"Track the {names[i]}.", "object": i, "name": names[i],
                      "points": track})
        # the object at one given time: the visible frame farthest from where it was first seen, so that
        # writing the first frame's place again (what a track can get away with) is wrong
        seen_at = np.nonzero(c.visible[:, i])[0]
        k = int(seen_at[np.argmax(np.hypot(*(c.points[seen_at, i] - c.points[seen_at[0], i]).T))])
        tasks.append({"task": "point_at", "question": f"Point to the {names[i]} at {c.time(k)} s.", "object": i,
                      "name": names[i], "frame": k, "points": [(c.time(k), i, *_xy(c.points[k, i]))]})
    return tasks


def record(c: Clip) -> dict:
    """The clip's ground truth as JSON-ready data (masks as boxes and points; exact masks stay in memory)."""
    return {
        "fps": c.fps, "size": c.size, "frames": len(c.frames),
        "objects": [{"id": i, "name": m.obj.name, "shape": m.obj.shape, "color": m.obj.color, "size": m.obj.size,
                     "start_frame": m.start, "bounces": m.bounce} for i, m in enumerate(c.movers)],
        "tracks": [[None if not c.visible[t, i] else {"box": c.boxes[t, i].tolist(),
                                                      "point": [int(v) for v in c.points[t, i]]}
                    for i in range(len(c.movers))] for t in range(len(c.frames))],
        "events": c.events,
        "tasks": [{k: v for k, v in task.items()} for task in video_tasks(c)],
    }


__all__ = ["Mover", "Clip", "clip", "video_tasks", "TASK_KINDS", "record", "events", "VIDEO_SPLITS"]
