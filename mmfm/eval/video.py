"""Scores for Molmo2's video tasks on world clips (mmfm.world.video), each with a 95% interval.

- counting: exact and within one, over clips;
- spatio-temporal pointing: a predicted (t, x, y) is a hit on object i when t is within `tolerance`
  seconds of the time i appears and (x, y) falls in i's visible mask at the frame nearest t; hits are
  matched one to one (maximum matching: Hungarian with 0/1 costs), then precision, recall, F1;
- tracking: over the frames where the object is visible, the fraction whose predicted point falls in
  its mask, and identity switches: how often the point moves from one object's mask to another's.
- pointing at a time: whether the point falls in the object's mask at the frame asked for;
- pointing on an image set: a predicted (image, x, y) is a hit on an object of that image when it falls in
  its mask; matched one to one as above, then P/R/F1.
"""

from __future__ import annotations

import math

import numpy as np

from mmfm.eval.vqa import max_matching


def interval(values) -> float:
    """Half-width of a 95% interval of a mean (normal approximation; 0 for fewer than two values)."""
    v = np.asarray(list(values), dtype=float)
    return float(1.96 * v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def count_scores(predicted, truth) -> dict:
    """predicted: counts (None where the answer gave none), truth: counts."""
    exact = [p is not None and p == t for p, t in zip(predicted, truth)]
    near = [p is not None and abs(p - t) <= 1 for p, t in zip(predicted, truth)]
    return {"n": len(exact), "exact": float(np.mean(exact)) if exact else 0.0, "exact_ci95": interval(exact),
            "within_one": float(np.mean(near)) if near else 0.0, "within_one_ci95": interval(near)}


def _frame(t: float, fps: float, frames: int) -> int:
    return min(frames - 1, max(0, int(round(t * fps))))


def matched_scores(ok: np.ndarray) -> dict:
    """ok (points, truths) bool: which predicted point may count for which true object -> one-to-one
    matches (maximum matching), precision, recall, F1."""
    n_points, n_truth = ok.shape
    tp = max_matching(ok) if n_points and n_truth else 0
    prec = tp / n_points if n_points else 0.0
    rec = tp / n_truth if n_truth else 0.0
    return {"tp": tp, "precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if tp else 0.0}


def st_point_scores(points, clip, shape: str, tolerance: float = 0.5) -> dict:
    """points: [(t, x, y)] predicted for "every <shape> when it appears" on `clip` -> tp, P, R, F1."""
    truth = [(e["object"], e["time"]) for e in clip.events
             if e["event"] == "appears" and clip.movers[e["object"]].obj.shape == shape]
    if not points and not truth:
        return {"tp": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    ok = np.zeros((len(points), len(truth)), dtype=bool)
    f = len(clip.frames)
    for p, (t, x, y) in enumerate(points):
        fr = _frame(t, clip.fps, f)
        xi, yi = int(x), int(y)
        inside = 0 <= xi < clip.size and 0 <= yi < clip.size
        for g, (obj, t0) in enumerate(truth):
            ok[p, g] = inside and abs(t - t0) <= tolerance + 1e-9 and bool(clip.masks[fr, obj, yi, xi])
    return matched_scores(ok)


def point_at_score(points, clip, obj: int, frame: int) -> float:
    """points: [(t, x, y)] answered to "point to obj at the time of `frame`" -> 1.0 when the first point is
    in obj's mask at that frame (the time the answer writes is not what is asked), else 0.0."""
    if not points:
        return 0.0
    x, y = int(points[0][1]), int(points[0][2])
    return float(0 <= x < clip.size and 0 <= y < clip.size and bool(clip.masks[frame, obj, y, x]))


def track_scores(points, clip, obj: int) -> dict:
    """points: [(t, x, y)] predicted while tracking object `obj` -> in_mask (fraction of the frames
    where obj is visible whose point is in its mask; a frame without a point is a miss) and switches."""
    f = len(clip.frames)
    by_frame: dict[int, tuple[int, int]] = {}
    for t, x, y in points:
        by_frame[_frame(t, clip.fps, f)] = (int(x), int(y))
    frames = np.nonzero(clip.visible[:, obj])[0]
    hits, owners = [], []
    for fr in frames:
        if fr not in by_frame:
            hits.append(False)
            continue
        x, y = by_frame[fr]
        inside = 0 <= x < clip.size and 0 <= y < clip.size
        hits.append(inside and bool(clip.masks[fr, obj, y, x]))
        if inside:
            under = np.nonzero(clip.masks[fr, :, y, x])[0]
            if len(under):
                owners.append(int(under[0]))
    switches = sum(a != b for a, b in zip(owners, owners[1:]))
    return {"frames": len(frames), "in_mask": float(np.mean(hits)) if hits else 0.0, "switches": switches}


def set_point_scores(points, image_set, truth) -> dict:
    """points: [(image k 0-based, x, y)] predicted on an image set (mmfm.world.image_sets); truth: the
    task's [(k, object, x, y)]. A point is a hit on a true object when it is on the same image and in that
    object's visible mask; hits are matched one to one, then precision, recall, F1."""
    if not points and not truth:
        return {"tp": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    ok = np.zeros((len(points), len(truth)), dtype=bool)
    size = image_set.size
    for p, (k, x, y) in enumerate(points):
        xi, yi = int(x), int(y)
        if not (0 <= k < len(image_set.scenes) and 0 <= xi < size and 0 <= yi < size):
            continue
        masks = image_set.scenes[k].masks
        for g, (k0, obj, _, _) in enumerate(truth):
            ok[p, g] = k == k0 and bool(masks[obj, yi, xi])
    return matched_scores(ok)


def set_track_score(points, image_set, truth) -> float:
    """points: [(frame k, x, y)] answered to "track the X" on a moved set; truth: the task's [(k, object,
    x, y)] on the frames where it is visible -> the fraction of those frames whose point (the first one
    written for the frame) is in the object's mask; a frame without a point is a miss."""
    by_frame: dict[int, tuple[int, int]] = {}
    for k, x, y in points:
        by_frame.setdefault(k, (int(x), int(y)))
    size, hits = image_set.size, []
    for k, obj, _, _ in truth:
        x, y = by_frame.get(k, (-1, -1))
        hits.append(0 <= x < size and 0 <= y < size and bool(image_set.scenes[k].masks[obj, y, x]))
    return float(np.mean(hits)) if hits else 0.0


__all__ = ["count_scores", "matched_scores", "st_point_scores", "track_scores", "point_at_score", "set_point_scores",
           "set_track_score", "interval"]
