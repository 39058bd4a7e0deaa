"""Does a world Molmo2 bind a time to its frame? Moved sets (mmfm.world.image_sets.moved_set: one scene,
its objects re-placed in every frame) with few frames, where "Point to the X at t s." has one right place
per frame and the object's first sighting is the wrong answer for every later time.

- `--probe DIR [--frames F] [--n N]`: for the moved sets' questions about a later frame, how often the
  first point lands on the object at the frame asked for, on its place in frame 0, or elsewhere (a model
  that picks a frame at random lands on the asked one about 1/F of the time); the first frame's questions'
  in-mask; the track score (mmfm.eval.video.set_track_score); whether the time written is the one asked;
  for the answers that miss both places: on another object (of the asked frame, of frame 0), their median
  distance to the object at the asked time / at frame 0 / halfway, and how often x lies in one sighting's
  box and y in the other's (coordinates read part from each frame).
- `--train OUT --from DIR [--frames F] [--sets S] [--steps N]`: trains on moved sets of F frames alone
  (the world-video preset with F frames; whole LM, the --from model's layout, causal vision, bf16), so a
  curriculum can start where the binding is a choice between two frames; `--lr` the adapter's (the LM
  learns at a sixth of it, as in `mmfm train molmo2 --train-lm`); `--frame-index`: the patches of each frame
  on their own token (mmfm.train.molmo2.add_frame_index; ids for the world clips' 8 frames, so that the
  model can go on to clips; `--frame-index time`: their directions from the frames' timestamp tokens);
  `--later-only`: no question about the first frame, so a model that reads frame 0 alone cannot score.

    python bench/molmo2_binding.py --probe DIR --frames 2 --n 20
    python bench/molmo2_binding.py --train OUT --from DIR --frames 2 --sets 16 --steps 60 [--frame-index]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np


def _mean(values: list) -> float:
    """The mean, or nan where a probe had nothing of that kind to count."""
    return float(np.mean(values)) if values else float("nan")


def probe(model_dir: str, frames: int, n: int) -> None:
    from molmo2_sets import _model_and_data  # bench/ is the script's folder

    from mmfm.eval.molmo2_world import _set_points, ask_clip
    from mmfm.eval.video import interval, set_point_scores, set_track_score

    m, data = _model_and_data(model_dir, frames)
    t0 = time.time()
    for split in ("test", "heldout"):
        data.split = split
        asked, first, first_frame, track, same = [], [], [], [], []
        time_ok, others, others0, dist, mixed = [], [], [], [], []
        for i in range(n):
            ex, s, tasks = data.set_example(i, "moved")
            answers = ask_clip(m, data, ex.context, ex.patches, ex.pooling, [t["question"] for t in tasks], 160)
            places = {}  # frame -> the first point's place: does the place asked for follow the time?
            for t, a in zip(tasks, answers):
                pts = _set_points(a, s, "moved")
                if t["task"] == "track":
                    track.append(set_track_score(pts, s, t["points"]))
                    continue
                k = t["image"]
                p = pts[:1]  # the first point: where the answer puts the (first) object asked about
                places[k] = tuple(p[0][1:]) if p else None
                objs = [(k, q, 0.0, 0.0) for _, q, _, _ in t["points"]]
                on_asked = bool(p) and set_point_scores(p, s, objs)["f1"] > 0
                if k == 0:
                    first_frame.append(on_asked)
                    continue
                on_first = bool(p) and set_point_scores([(0, x, y) for _, x, y in p], s,
                                                        [(0, q, 0.0, 0.0) for _, q, _, _ in t["points"]])["f1"] > 0
                if places.get(0) is not None and places[k] is not None:
                    same.append(float(places[k] == places[0]))
                asked.append(float(on_asked))
                first.append(float(on_first and not on_asked))
                time_ok.append(float(bool(p) and p[0][0] == k))
                if p and not on_asked and not on_first:  # a miss: on which object, of which frame, if any?
                    x, y = int(p[0][1]), int(p[0][2])
                    inside = 0 <= x < s.size and 0 <= y < s.size
                    others.append(inside and bool(s.scenes[k].masks[:, y, x].any()))
                    others0.append(inside and bool(s.scenes[0].masks[:, y, x].any()))
                    obj = t["points"][0][1]  # how far from the object at the asked time, at frame 0, between?
                    c1, c0 = s.scenes[k].centroids[obj], s.scenes[0].centroids[obj]
                    dist.append([float(np.hypot(x - c[0], y - c[1])) for c in (c1, c0, (c1 + c0) / 2)])
                    b1, b0 = s.scenes[k].boxes[obj], s.scenes[0].boxes[obj]  # x from one sighting, y from the other?
                    mixed.append(bool((b1[0] <= x <= b1[2] and b0[1] <= y <= b0[3])
                                      or (b0[0] <= x <= b0[2] and b1[1] <= y <= b1[3])))
        print(f"{split} ({frames} frames, {n} sets): later-frame questions {len(asked)}: on the asked frame's object "
              f"{np.mean(asked):.2f} +- {interval(asked):.2f}, on its frame-0 place {np.mean(first):.2f} "
              f"(random frame ~{1 / frames:.2f}); frame-0 questions in-mask {np.mean(first_frame):.2f} "
              f"(n {len(first_frame)}); tracks in-mask {np.mean(track):.2f} +- {interval(track):.2f} "
              f"(n {len(track)}); later-frame answers at the very place of the frame-0 answer "
              f"{_mean(same):.2f} (n {len(same)}); written at the asked time "
              f"{np.mean(time_ok):.2f}; of the other answers (n {len(others)}) on some object of the asked frame "
              f"{_mean(others):.2f}, of frame 0 "
              f"{_mean(others0):.2f}; their median distance (px of {s.size}) to "
              f"the object at the asked time / at frame 0 / halfway "
              f"{'/'.join(f'{v:.0f}' for v in np.median(dist, axis=0)) if dist else 'nan'}, x of one sighting's "
              f"box and y of the other's {_mean(mixed):.2f}", flush=True)
    print(f"{time.time() - t0:.0f} s")


def train(out: str, start: str, frames: int, sets: int, steps: int, save_every: int, lr: float,
          frame_index: str = "", later_only: bool = False) -> None:
    from mmfm.data import molmo2_world
    from mmfm.train import molmo2 as tm

    if later_only:  # this process only: no question about frame 0, so no answer there scores
        every = molmo2_world.set_tasks
        molmo2_world.set_tasks = lambda s, layout: [t for t in every(s, layout)
                                                    if t["task"] == "point_in" and t["image"] > 0]

    name = f"binding-{frames}"
    p = copy.deepcopy(tm.PRESETS["world-video"])
    p["data"]["frames"] = frames
    tm.PRESETS[name] = p  # this process only: the world-video preset with fewer frames
    tm.train_world_molmo2(name, out, train_lm=True, frame_layout=True, bidirectional=False, tasks=(), sets=sets,
                          set_layouts=("moved",), evaluate=False, start=start, steps=steps, precision="bf16",
                          save_every=save_every, lr=lr,
                          frame_index=tm.PRESETS["world-video"]["data"]["frames"] if frame_index else 0,
                          frame_index_init=frame_index or "random")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probe", help="a world Molmo2 folder (what `mmfm train molmo2` wrote)")
    ap.add_argument("--train", help="a run folder: train on moved sets alone")
    ap.add_argument("--from", dest="start", help="with --train: the world Molmo2 to train further")
    ap.add_argument("--frames", type=int, default=2, help="frames per moved set")
    ap.add_argument("--n", type=int, default=20, help="moved sets per split (--probe)")
    ap.add_argument("--sets", type=int, default=16, help="moved sets per batch (--train)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--save-every", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-4, help="the adapter's; the LM learns at a sixth of it")
    ap.add_argument("--later-only", action="store_true", help="with --train: only the questions about a later "
                    "frame than the first (no frame-0 question, no track)")
    ap.add_argument("--frame-index", nargs="?", const="random", default="", choices=["random", "time"],
                    help="with --train: a patch token per frame, its direction random or the frame's time's tokens")
    a = ap.parse_args()
    if a.train:
        if not a.start:
            ap.error("--train needs --from")
        train(a.train, a.start, a.frames, a.sets, a.steps, a.save_every, a.lr, a.frame_index, a.later_only)
    if a.probe:
        probe(a.probe, a.frames, a.n)


if __name__ == "__main__":
    main()
