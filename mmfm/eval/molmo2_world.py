"""Molmo2 on world videos: every task of a clip asked as its own turn after the clip's frames, the
answers parsed and scored (mmfm.eval.video): QA accuracy by type, counting exact / within one,
spatio-temporal pointing P/R/F1, tracking in-mask fraction and identity switches, pointing at one object at a
given time (in its mask at that frame), with 95% intervals; and on image sets (mmfm.world.image_sets)
multi-image pointing and QA, and pointing at a time in a slideshow of scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mmfm.errors import InvalidText
from mmfm.eval.video import (
    count_scores,
    interval,
    point_at_score,
    set_point_scores,
    set_track_score,
    st_point_scores,
    track_scores,
)
from mmfm.eval.vqa import normalize_answer, parse_count
from mmfm.models.molmo2_track import point_by_frames, track_by_frames
from mmfm.text.pointing import parse_points_v2, parse_video_points
from mmfm.world.image_sets import LAYOUTS

QA_TYPES = ("first_move", "touch", "leaves_color", "end_position")


def ask_clip(model, data, context_ids, patches, pooling, questions: list[str], max_new_tokens: int = 160) -> list[str]:
    """One generation per question, batched: each row is the clip's frames then one question turn."""
    rows = [context_ids + data.question_ids(q) for q in questions]
    with torch.no_grad():
        feats = model.encode(patches, pooling)  # the clip is encoded once, then stands in every row
    return model.answer_rows(rows, feats.repeat(len(rows), 1), max_new_tokens)


def _points(text: str, c) -> list[tuple[float, float, float]]:
    try:
        return [(t, x, y) for t, _, x, y in parse_video_points(text, (len(c.frames) - 1) / c.fps, c.size, c.size)]
    except InvalidText:
        return []  # malformed markup scores as no points


def _set_points(text: str, s, layout: str) -> list[tuple[int, float, float]]:
    """An answer on an image set -> [(image k 0-based, x, y)]: the image index of the multi-image markup,
    or in a slideshow the frame the time names."""
    try:
        if layout != "images":
            return [(int(round(t * s.fps)), x, y)
                    for t, _, x, y in parse_video_points(text, (len(s.scenes) - 1) / s.fps, s.size, s.size)]
        return [(img - 1, x, y) for img, x, y in parse_points_v2(text, {k + 1: (s.size, s.size)
                                                                       for k in range(len(s.scenes))})]
    except InvalidText:
        return []


def _mean(v: list) -> dict:
    return {"mean": float(np.mean(v)) if v else None, "ci95": interval(v), "n": len(v)}


def evaluate_sets(model, data, n: int, progress: bool = True, max_new_tokens: int = 160) -> dict:
    """n image sets of data.split, each asked in every layout: multi-image pointing F1 (at an X in image k;
    at every X in all the images), slideshow pointing F1 at a given time (different scenes; one scene
    re-placed: "moved"), tracking on the moved scene (frames whose point is in the mask), "which image has
    the most X" accuracy, "how many X in all the images" exact. max_new_tokens holds a whole track."""
    from tqdm.auto import tqdm

    scores: dict[str, list] = {"point_in": [], "point_every": [], "video": [], "moved": [], "track": [], "most": [],
                               "count_all": []}
    for i in tqdm(range(n), desc=f"eval Molmo2 image sets ({data.split})", disable=not progress, dynamic_ncols=True):
        for layout in LAYOUTS:
            ex, s, tasks = data.set_example(i, layout)
            answers = ask_clip(model, data, ex.context, ex.patches, ex.pooling, [t["question"] for t in tasks],
                                max_new_tokens)
            for t, a in zip(tasks, answers):
                if t["task"] == "track":
                    scores["track"].append(set_track_score(_set_points(a, s, layout), s, t["points"]))
                elif "points" in t:
                    key = t["task"] if layout == "images" else layout
                    scores[key].append(set_point_scores(_set_points(a, s, layout), s, t["points"])["f1"])
                elif t["task"] == "most":
                    scores["most"].append(float(normalize_answer(a) == normalize_answer(t["answer"])))
                else:
                    scores["count_all"].append(float(parse_count(a) == t["count"]))
    return {"sets": n, "pointing_in_image_f1": _mean(scores["point_in"]),
            "pointing_every_f1": _mean(scores["point_every"]), "slideshow_at_a_time_f1": _mean(scores["video"]),
            "moved_at_a_time_f1": _mean(scores["moved"]), "moved_track_in_mask": _mean(scores["track"]),
            "most_accuracy": _mean(scores["most"]), "count_all_exact": _mean(scores["count_all"])}


def _track_by_frames(model, c, task: dict, zoom: float, into: dict) -> None:
    """The track task asked frame by frame (mmfm.models.molmo2_track), scored before and after the second look."""
    tr = track_by_frames(model, c.frames, [c.time(k) for k in range(len(c.frames))], task["name"], zoom)
    s = track_scores(tr.points, c, task["object"])
    into["in_mask"].append(s["in_mask"])
    into["switches"].append(s["switches"])
    into["first_look"].append(track_scores(tr.first_look, c, task["object"])["in_mask"])


def evaluate_molmo2_world(model, data, n: int = 50, splits=("test", "heldout"), out=None, progress: bool = True,
                          examples: int = 8, max_new_tokens: int = 160, sets: int = 0,
                          frame_tracks: float = 0.0, grey_frames: bool = False) -> dict:
    """`data`: a WorldVideoData (its tokenizer and layout); n clips per split, and `sets` image sets
    (evaluate_sets). max_new_tokens must hold a whole track (8 frames: about 130 tokens). frame_tracks > 0:
    every track asked frame by frame too (mmfm.models.molmo2_track, that zoom for the second look; 1: none),
    scored beside the one-pass answer as "tracking_by_frames", and every point task (point_by_frames, the same
    zoom; `grey_frames`: its frames in grey, point_by_frames(grey=True)) as "pointing_by_frames"."""
    from tqdm.auto import tqdm

    report: dict = {"clips_per_split": n}
    samples = []
    model.eval()
    for split in splits:
        data_split = data.split
        data.split = split
        acc: dict[str, list] = {k: [] for k in QA_TYPES}
        counts, truths, f1s, in_mask, switches, at = [], [], [], [], [], []
        by_frames: dict[str, list] = {"in_mask": [], "first_look": [], "switches": [], "f1": []}
        for i in tqdm(range(n), desc=f"eval Molmo2 ({split})", disable=not progress, dynamic_ncols=True):
            ex, c, tasks = data.example(i)
            answers = ask_clip(model, data, ex.context, ex.patches, ex.pooling, [t["question"] for t in tasks],
                               max_new_tokens)
            for t, a in zip(tasks, answers):
                if t["task"] in QA_TYPES:
                    acc[t["task"]].append(float(normalize_answer(a) == normalize_answer(t["answer"])))
                elif t["task"] == "count":
                    counts.append(parse_count(a))
                    truths.append(t["count"])
                elif t["task"] == "point":
                    f1s.append(st_point_scores(_points(a, c), c, t["shape"])["f1"])
                    if frame_tracks:
                        fp = point_by_frames(model, c.frames, [c.time(k) for k in range(len(c.frames))], t["shape"],
                                             zoom=frame_tracks, grey=grey_frames)
                        by_frames["f1"].append(st_point_scores(fp.points, c, t["shape"])["f1"])
                elif t["task"] == "point_at":
                    at.append(point_at_score(_points(a, c), c, t["object"], t["frame"]))
                elif t["task"] == "track":
                    s = track_scores(_points(a, c), c, t["object"])
                    in_mask.append(s["in_mask"])
                    switches.append(s["switches"])
                    if frame_tracks:
                        _track_by_frames(model, c, t, frame_tracks, by_frames)
                if len(samples) < examples:
                    samples.append({"split": split, "clip": i, "question": t["question"], "answer": a,
                                    "truth": t.get("answer") or t.get("points")})
        report[split] = {
            "qa": {k: {"accuracy": float(np.mean(v)) if v else None, "ci95": interval(v), "n": len(v)}
                   for k, v in acc.items()},
            "counting": count_scores(counts, truths),
            "pointing": {"f1": float(np.mean(f1s)) if f1s else None, "ci95": interval(f1s), "n": len(f1s)},
            "tracking": {"in_mask": float(np.mean(in_mask)) if in_mask else None, "ci95": interval(in_mask),
                         "switches_per_track": float(np.mean(switches)) if switches else None, "n": len(in_mask)},
            "point_at": {"in_mask": float(np.mean(at)) if at else None, "ci95": interval(at), "n": len(at)},
        }
        if frame_tracks:
            b = by_frames
            report[split]["tracking_by_frames"] = {
                "zoom": frame_tracks, "in_mask": float(np.mean(b["in_mask"])) if b["in_mask"] else None,
                "ci95": interval(b["in_mask"]), "n": len(b["in_mask"]),
                "first_look_in_mask": float(np.mean(b["first_look"])) if b["first_look"] else None,
                "switches_per_track": float(np.mean(b["switches"])) if b["switches"] else None}
            report[split]["pointing_by_frames"] = {"zoom": frame_tracks, "grey": grey_frames,
                                                   "f1": float(np.mean(b["f1"])) if b["f1"] else None,
                                                   "ci95": interval(b["f1"]), "n": len(b["f1"])}
        if sets:
            report[split]["image_sets"] = evaluate_sets(model, data, sets, progress, max_new_tokens)
        data.split = data_split
    report["samples"] = samples
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "eval.json").write_text(json.dumps(report, indent=2, default=str))
    return report


__all__ = ["evaluate_molmo2_world", "evaluate_sets", "ask_clip", "QA_TYPES"]
