"""A world Molmo2 on world image sets, and whether it reads the frame a time names.

- `--model DIR`: the image-set scores (mmfm.eval.molmo2_world.evaluate_sets) on n sets per split, then the
  slideshow questions again ("video": different scenes; "moved": one scene re-placed) with F1 by the frame
  asked for; for "video" the same answers scored as if about the same kind of object on another frame, for
  "moved" how often an answer about a later frame lands on the object's place in frame 0 (reading the
  object's first sighting, not the frame the time names);
- `--tracks DIR`: only the moved sets' track question (a few minutes): in-mask with its interval, how many
  tracks put every point at one place, and how often the first frame's point is in the mask;
- `--answers JSONL` (what bench/molmo2_answers.py wrote): for each point-at-a-time answer on a clip, whether
  its point is nearer the object's place at the frame asked for or where the object was first seen.

    python bench/molmo2_sets.py --model DIR [--n 10]
    python bench/molmo2_sets.py --tracks DIR [--n 10]
    python bench/molmo2_sets.py --answers answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np
import torch


def _model_and_data(model_dir: str, frames: int = 8):
    from mmfm.cli.molmo2 import _load_molmo2
    from mmfm.data.molmo2_world import WorldVideoData

    torch.manual_seed(0)
    m = _load_molmo2(model_dir).eval()
    return m, WorldVideoData(m, m._tok(), seed=0, size=m.config.vision.image_size, frames=frames)


def sets(model_dir: str, n: int) -> None:
    from mmfm.eval.molmo2_world import _set_points, ask_clip, evaluate_sets
    from mmfm.eval.video import set_point_scores
    from mmfm.world.facts import select

    m, data = _model_and_data(model_dir)
    t0 = time.time()
    for split in ("test", "heldout"):
        data.split = split
        print(split, json.dumps(evaluate_sets(m, data, n, progress=False)), flush=True)
        for layout in ("video", "moved"):
            by_frame, elsewhere, still = defaultdict(list), [], []
            for i in range(n):
                ex, s, tasks = data.set_example(i, layout)
                answers = ask_clip(m, data, ex.context, ex.patches, ex.pooling, [t["question"] for t in tasks], 160)
                for t, a in zip(tasks, answers):
                    if t["task"] == "track":  # a moved set's track: does it move at all?
                        pts = _set_points(a, s, layout)
                        still.append(len(pts) > 1 and len({(round(x), round(y)) for _, x, y in pts}) == 1)
                        continue
                    k, pts = t["image"], _set_points(a, s, layout)
                    by_frame[k].append(set_point_scores(pts, s, t["points"])["f1"])
                    obj = t["points"][0][1]
                    if layout == "moved":
                        if k:  # the same points against the object's place in frame 0
                            on_first = set_point_scores([(0, x, y) for _, x, y in pts], s, [(0, obj, 0.0, 0.0)])
                            elsewhere.append(on_first["f1"] > 0)
                        continue
                    o = s.scenes[k].scene.objects[obj]
                    best = 0.0  # the same points on another frame's objects of the asked colour and shape
                    for j, r in enumerate(s.scenes):
                        truth = [(j, q, 0.0, 0.0) for q in select(r, o.color, o.shape)] if j != k else []
                        if truth:
                            best = max(best, set_point_scores([(j, x, y) for _, x, y in pts], s, truth)["f1"])
                    elsewhere.append(best)
            what = ("later frames' answers on the object's frame-0 place" if layout == "moved" else
                    "the same answers as if about another frame's objects of that kind (best frame)")
            print(f"  {layout}: F1 by the frame asked for "
                  f"{ {k: round(float(np.mean(v)), 2) for k, v in sorted(by_frame.items())} }; {what}: "
                  f"{np.mean(elsewhere):.2f}" + (f"; tracks at one place: {sum(still)} of {len(still)}"
                                                  if still else ""), flush=True)
    print(f"{time.time() - t0:.0f} s")


def tracks(model_dir: str, n: int) -> None:
    from mmfm.eval.molmo2_world import _set_points, ask_clip
    from mmfm.eval.video import interval, set_track_score

    m, data = _model_and_data(model_dir)
    t0 = time.time()
    for split in ("test", "heldout"):
        data.split = split
        scores, still, first = [], 0, []
        for i in range(n):
            ex, s, tasks = data.set_example(i, "moved")
            for t in (t for t in tasks if t["task"] == "track"):
                pts = _set_points(ask_clip(m, data, ex.context, ex.patches, ex.pooling, [t["question"]], 160)[0],
                                  s, "moved")
                scores.append(set_track_score(pts, s, t["points"]))
                still += len(pts) > 1 and len({(round(x), round(y)) for _, x, y in pts}) == 1
                first.append(set_track_score(pts[:1], s, t["points"][:1]) if pts else 0.0)
        print(f"{split}: moved-set tracks in-mask {np.mean(scores):.2f} +- {interval(scores):.2f} (n {len(scores)}); "
              f"{still} at one place; first frame's point in the mask {np.mean(first):.2f}", flush=True)
    print(f"{time.time() - t0:.0f} s")


def first_or_asked(path: str) -> None:
    from mmfm.world.video import clip

    rows = [json.loads(x) for x in open(path)]
    for split in ("test", "heldout"):
        d_first, d_asked = [], []
        for r in rows:
            if r["task"] != "point_at" or r["split"] != split or not r["points"]:
                continue
            c = clip(0, split, r["clip"])
            j, k = r["object"], r["frame"]
            first = np.nonzero(c.visible[:, j])[0][0]
            p = np.array([r["points"][0]["x"], r["points"][0]["y"]])
            d_first.append(float(np.hypot(*(p - c.points[first, j]))))
            d_asked.append(float(np.hypot(*(p - c.points[k, j]))))
        nearer = sum(a <= f for a, f in zip(d_asked, d_first))
        print(f"{split}: {len(d_asked)} point-at-a-time answers, {nearer} nearer the asked frame's place than the "
              f"first-seen one; median px to the asked place {np.median(d_asked):.1f}, to the first-seen "
              f"{np.median(d_first):.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a world Molmo2 folder (what `mmfm train molmo2` wrote)")
    ap.add_argument("--n", type=int, default=10, help="image sets per split")
    ap.add_argument("--answers", help="a JSONL bench/molmo2_answers.py wrote")
    ap.add_argument("--tracks", help="a world Molmo2 folder: only the moved sets' tracks")
    a = ap.parse_args()
    if a.answers:
        first_or_asked(a.answers)
    if a.model:
        sets(a.model, a.n)
    if a.tracks:
        tracks(a.tracks, a.n)
    if not (a.answers or a.model or a.tracks):
        ap.error("give --model, --tracks or --answers")


if __name__ == "__main__":
    main()
