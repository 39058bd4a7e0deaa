"""Tracking by pointing frame by frame, with a second look: another way to ask a Molmo2 for a track.

Molmo2 answers "Track the X." in one pass over the whole clip, which asks it to bind every timestamp to its
frame and to write a place in each. `track_by_frames` asks the same model about each sampled frame alone
instead (a one-frame video at 0.0 s, "Point to the X.", the question its stills are trained on), so no
timestamp has to be bound, and then looks again: a crop around the first answer's point, `zoom` times
smaller than the frame, is enlarged back to the frame's size and asked the same question. In the crop the
object is `zoom` times larger, so a point written a few pixels off at full view lands closer; the second
answer's point nearest the first is kept. A frame whose first answer has no point ("There are none.") has
none in the track: the object is taken to be out of sight there.

Where the query names several objects, each frame keeps the point nearest the one kept in the frame before
(the first point written, in the first frame that has one). This is tracking by detection, with the model
as the detector; the one-pass answer stays what `Molmo2.ask` gives. Measured against it on world clips:
bench/RESULTS.md, "Tracking frame by frame with a second look".

`point_by_frames` answers "Point to every X when it appears." the same way: each frame alone is asked
"Point to every X." (no count said), each point is looked at again as above, the points of consecutive
frames are linked into tracks (each track's next point is the one nearest where its last two points say it
goes), and a track's first point is where and when its object appeared. By default any distance links, so
an object is taken to appear only where a frame has more points than there are tracks: a point the model
misplaces in one frame does not become a new object. A track seen in fewer than `min_frames` frames is
taken for a stray point, unless it starts so late in the clip that it could not be seen longer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mmfm.errors import ConfigError, InvalidPrompt, InvalidText
from mmfm.text.pointing import format_video_points, parse_video_points
from mmfm.vision.transforms import greyscale


@dataclass
class FrameTrack:
    """points: (time s, x, y) pixels for each frame where the object was pointed at, after the second look;
    first_look: the same before it; answers: the first look's answer for every frame."""

    points: list[tuple[float, float, float]]
    first_look: list[tuple[float, float, float]]
    answers: list[str]

    def markup(self, width: int, height: int, label: str) -> str:
        """The track in Molmo2's video markup (one object, id 1), as a one-pass answer writes it."""
        return format_video_points([(t, 1, x, y) for t, x, y in self.points], width, height, label)


@dataclass
class FramePoints:
    """points: (time s, x, y) where and when each object found first appeared, in order of time; tracks:
    each object's (time s, x, y) frame by frame; answers: each frame's answer."""

    points: list[tuple[float, float, float]]
    tracks: list[list[tuple[float, float, float]]]
    answers: list[str]

    def markup(self, width: int, height: int, label: str) -> str:
        """The points in Molmo2's video markup, numbered in order, or "There are none."."""
        return format_video_points([(t, k, x, y) for k, (t, x, y) in enumerate(self.points, 1)], width, height,
                                   label) or "There are none."


def link_points(per_frame: list[list[tuple[float, float]]], gate: float | None = None,
                patience: int = 2) -> list[list[tuple]]:
    """Points found in each frame -> tracks [(frame, x, y)]. Each live track predicts its next place from its
    last two points (constant velocity); pairs of (track, point) are taken nearest first, one to one, while
    within `gate` pixels (None: at any distance); a point left over starts a track; a track not continued for
    `patience` frames ends."""
    live: list[list[tuple]] = []
    done: list[list[tuple]] = []
    for k, pts in enumerate(per_frame):
        pairs = []
        for a, tr in enumerate(live):
            k1, x1, y1 = tr[-1]
            vx, vy = 0.0, 0.0
            if len(tr) > 1:
                k0, x0, y0 = tr[-2]
                vx, vy = (x1 - x0) / (k1 - k0), (y1 - y0) / (k1 - k0)
            px, py = x1 + vx * (k - k1), y1 + vy * (k - k1)
            pairs += [(float(np.hypot(px - x, py - y)), a, b) for b, (x, y) in enumerate(pts)]
        taken_t, taken_p = set(), set()
        for d, a, b in sorted(pairs):
            if (gate is None or d <= gate) and a not in taken_t and b not in taken_p:
                live[a].append((k, *pts[b]))
                taken_t.add(a)
                taken_p.add(b)
        still = []
        for a, tr in enumerate(live):
            (still if a in taken_t or k - tr[-1][0] < patience else done).append(tr)
        live = still + [[(k, *pts[b])] for b in range(len(pts)) if b not in taken_p]
    return sorted(done + live, key=lambda tr: (tr[0][0], tr[0][1], tr[0][2]))


def point_by_frames(model, frames: np.ndarray, timestamps, query: str, zoom: float = 2.0,
                    gate: float | None = None, min_frames: int = 3, batch: int = 16, grey: bool = False) -> FramePoints:
    """frames uint8 (F, H, W, 3) and their times -> where and when each `query` ("circle", "red squares")
    first appears: "Point to every <query>." about each frame alone, each point then looked at again as
    `track_by_frames` does (zoom 1: not), linked frame to frame within `gate` times the frame's larger side
    (None: at any distance, so a new track starts only where a frame has more points than the tracks alive).
    `grey`: the frames are asked about in grey (mmfm.vision.transforms.greyscale), for a query that names no colour
    and a model trained on grey frames (`--grey-stills`): a tower trained on some colour-shape pairs codes the
    pairs, so a shape in a colour it was never drawn in is read poorly, and in grey as any other
    (bench/molmo2_tower_probe.py)."""
    frames = _checked(frames, timestamps, zoom, query, "point to")
    frames = greyscale(frames) if grey else frames
    if (gate is not None and not 0.0 < gate <= 1.0) or min_frames < 1:
        raise ConfigError(f"gate {gate}, min_frames {min_frames}: a gate in (0, 1] of the frame (or none), at least "
                          "one frame")
    question = f"Point to every {query.strip()}."
    per_frame, answers = point_frames(model, list(frames), question, batch)
    if zoom > 1:
        chosen = [(k, p) for k, pts in enumerate(per_frame) for p in pts]
        per_frame = [[] for _ in per_frame]
        for k, p in second_look(model, frames, chosen, question, zoom, batch):
            per_frame[k].append(p)
    f = len(frames)
    tracks = [tr for tr in link_points(per_frame, None if gate is None else gate * max(frames.shape[1:3]))
              if len(tr) >= min_frames or tr[0][0] > f - min_frames]
    timed = [[(float(timestamps[k]), x, y) for k, x, y in tr] for tr in tracks]
    return FramePoints([tr[0] for tr in timed], timed, answers)


def point_frames(model, images: list[np.ndarray], question: str, batch: int = 16,
                 max_new_tokens: int = 48) -> tuple[list[list[tuple[float, float]]], list[str]]:
    """Each uint8 (H, W, 3) image as a one-frame video at 0.0 s, asked `question` -> the points of each
    answer in that image's pixels (none where the answer has no well-formed points), and the answers."""
    q_ids = model.turn_ids(question)
    points, answers = [], []
    for b in range(0, len(images), batch):
        chunk = images[b : b + batch]
        ctxs = [model.video_context(torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].contiguous(),
                                    [0.0]) for im in chunk]
        with torch.inference_mode():
            feats = torch.cat([model.encode(p, pool) for _, p, pool in ctxs])
        for im, text in zip(chunk, model.answer_rows([ids + q_ids for ids, _, _ in ctxs], feats, max_new_tokens)):
            answers.append(text)
            h, w = im.shape[:2]
            try:
                points.append([(x, y) for _, _, x, y in parse_video_points(text, 0.0, w, h)])
            except InvalidText:
                points.append([])  # a malformed answer: no point in this frame
    return points, answers


def _checked(frames, timestamps, zoom: float, query: str, what: str) -> np.ndarray:
    """The frames as an array, once they, their times, the zoom and the query are known to be usable."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InvalidPrompt(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if len(timestamps) != len(frames):
        raise InvalidPrompt(f"{len(frames)} frames but {len(timestamps)} timestamps")
    if not 1.0 <= zoom <= 8.0:
        raise ConfigError(f"zoom {zoom}: the second look enlarges a crop 1 to 8 times (1: no second look)")
    if not query.strip():
        raise InvalidPrompt(f"the object to {what} is empty")
    return frames


def _nearest(cands: list[tuple[float, float]], ref: tuple[float, float] | None) -> tuple[float, float]:
    if ref is None:
        return cands[0]
    return min(cands, key=lambda p: (p[0] - ref[0]) ** 2 + (p[1] - ref[1]) ** 2)


def track_by_frames(model, frames: np.ndarray, timestamps, query: str, zoom: float = 2.0,
                    batch: int = 16) -> FrameTrack:
    """frames uint8 (F, H, W, 3) and their times -> the track of `query` ("red circle"), one point a frame
    where the model finds it; zoom 1 skips the second look."""
    frames = _checked(frames, timestamps, zoom, query, "track")
    question = f"Point to the {query.strip()}."
    first, answers = point_frames(model, list(frames), question, batch)
    chosen: list[tuple[int, tuple[float, float]]] = []
    ref = None
    for k, pts in enumerate(first):
        if pts:
            ref = _nearest(pts, ref)
            chosen.append((k, ref))
    first_look = [(float(timestamps[k]), *p) for k, p in chosen]
    if zoom == 1:  # no second look
        return FrameTrack(first_look, first_look, answers)
    points = [(float(timestamps[k]), *p) for k, p in second_look(model, frames, chosen, question, zoom, batch)]
    return FrameTrack(points, first_look, answers)


def second_look(model, frames: np.ndarray, chosen: list[tuple[int, tuple[float, float]]], question: str,
                zoom: float, batch: int = 16) -> list[tuple[int, tuple[float, float]]]:
    """(frame k, point) pairs -> the same, each point moved to the nearest point the model gives when asked
    `question` again about a crop `zoom` times smaller around it (kept inside the frame), enlarged back to the
    frame's size; a point whose crop gets no point stays where it was."""
    if not chosen:
        return []
    h, w = frames.shape[1:3]
    cw, ch = max(1, round(w / zoom)), max(1, round(h / zoom))
    boxes, crops = [], []
    for k, (x, y) in chosen:  # a crop centred on the point, kept inside the frame
        x0 = int(min(max(round(x - cw / 2), 0), w - cw))
        y0 = int(min(max(round(y - ch / 2), 0), h - ch))
        boxes.append((x0, y0))
        crops.append(np.asarray(Image.fromarray(frames[k, y0 : y0 + ch, x0 : x0 + cw]).resize((w, h), Image.BILINEAR)))
    second = point_frames(model, crops, question, batch)[0]
    out = []
    for (k, p), (x0, y0), pts in zip(chosen, boxes, second):
        cands = [(x0 + u * cw / w, y0 + v * ch / h) for u, v in pts]  # back to the frame's pixels
        out.append((k, _nearest(cands, p) if cands else p))
    return out


__all__ = ["FrameTrack", "FramePoints", "track_by_frames", "point_by_frames", "point_frames", "link_points",
           "second_look"]
