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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mmfm.errors import ConfigError, InvalidPrompt, InvalidText
from mmfm.text.pointing import format_video_points, parse_video_points


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


def _nearest(cands: list[tuple[float, float]], ref: tuple[float, float] | None) -> tuple[float, float]:
    if ref is None:
        return cands[0]
    return min(cands, key=lambda p: (p[0] - ref[0]) ** 2 + (p[1] - ref[1]) ** 2)


def track_by_frames(model, frames: np.ndarray, timestamps, query: str, zoom: float = 2.0,
                    batch: int = 16) -> FrameTrack:
    """frames uint8 (F, H, W, 3) and their times -> the track of `query` ("red circle"), one point a frame
    where the model finds it; zoom 1 skips the second look."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InvalidPrompt(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if len(timestamps) != len(frames):
        raise InvalidPrompt(f"{len(frames)} frames but {len(timestamps)} timestamps")
    if not 1.0 <= zoom <= 8.0:
        raise ConfigError(f"zoom {zoom}: the second look enlarges a crop 1 to 8 times (1: no second look)")
    if not query.strip():
        raise InvalidPrompt("the object to track is empty")
    question = f"Point to the {query.strip()}."
    first, answers = point_frames(model, list(frames), question, batch)
    chosen: list[tuple[int, tuple[float, float]]] = []
    ref = None
    for k, pts in enumerate(first):
        if pts:
            ref = _nearest(pts, ref)
            chosen.append((k, ref))
    first_look = [(float(timestamps[k]), *p) for k, p in chosen]
    if zoom == 1 or not chosen:  # no second look
        return FrameTrack(first_look, first_look, answers)
    h, w = frames.shape[1:3]
    cw, ch = max(1, round(w / zoom)), max(1, round(h / zoom))
    boxes, crops = [], []
    for k, (x, y) in chosen:  # a crop centred on the point, kept inside the frame
        x0 = int(min(max(round(x - cw / 2), 0), w - cw))
        y0 = int(min(max(round(y - ch / 2), 0), h - ch))
        boxes.append((x0, y0))
        crops.append(np.asarray(Image.fromarray(frames[k, y0 : y0 + ch, x0 : x0 + cw]).resize((w, h), Image.BILINEAR)))
    second = point_frames(model, crops, question, batch)[0]
    points = []
    for (k, p), (x0, y0), pts in zip(chosen, boxes, second):
        cands = [(x0 + u * cw / w, y0 + v * ch / h) for u, v in pts]  # back to the frame's pixels
        points.append((float(timestamps[k]), *(_nearest(cands, p) if cands else p)))
    return FrameTrack(points, first_look, answers)


__all__ = ["FrameTrack", "track_by_frames", "point_frames"]
