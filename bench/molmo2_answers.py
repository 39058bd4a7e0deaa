"""Where a world Molmo2's answers land: every point, track, point-at-a-time and count answer of n clips per
split, kept as JSONL and laid on the clip's ground truth.

- pointing: points per answer against targets per question; whether each point lands on a target, on another
  object of the asked shape, on another shape, or on the background; targets of a held-out colour x shape
  composition against seen ones;
- tracking: in-mask by frame, how far a track's point moves between frames, against how far the object moves
  (a track that copies the first frame's place scores in-mask where the object has not moved yet);
- counting: (truth, answer) pairs.

And how far a track can get by writing the right token's cell (`--ceiling`): for every track point of world
clips, whether the centre of the cell that holds the object's point lies in its visible mask, for the shipped
world Molmo2's pooled 16 px cells (video_pool 2x2 of 8 px patches) and for 8 px cells (no pooling). With
`--summarize`, each track point is also checked against that 16 px cell: right cell, and in the mask when it is.

    python bench/molmo2_answers.py --model DIR [--n 20] [--out answers.jsonl]
    python bench/molmo2_answers.py --summarize answers.jsonl
    python bench/molmo2_answers.py --ceiling [--n 120]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict

import numpy as np
import torch

KINDS = ("point", "track", "point_at", "count")
CELL = 16  # px: the shipped world Molmo2 reads a 64 px frame as 4 x 4 tokens (8 px patches, pooled 2 x 2)


def _cell(x: float, y: float, cell: float, size: int = 64) -> tuple[int, int]:
    g = int(size // cell)
    return min(int(x // cell), g - 1), min(int(y // cell), g - 1)


def ceiling(n: int) -> None:
    """In-mask of tracks that write the centre of the right cell, on n world clips a split."""
    from mmfm.world.video import clip, video_tasks

    for split in ("test", "heldout"):
        hits: dict[int, list] = {CELL: [], CELL // 2: []}  # pooled 2 x 2, and every patch its own token
        for i in range(n):
            c = clip(0, split, i)
            for t in video_tasks(c):
                if t["task"] != "track":
                    continue
                o = t["object"]
                for f in np.nonzero(c.visible[:, o])[0]:
                    for cell in hits:
                        gx, gy = _cell(*c.points[f, o], cell, c.size)
                        hits[cell].append(bool(c.masks[f, o, int((gy + 0.5) * cell), int((gx + 0.5) * cell)]))
        print(f"{split}: {len(hits[CELL])} track points of {n} clips; the right cell's centre in the mask: "
              + ", ".join(f"{cell} px cells {np.mean(v):.3f}" for cell, v in hits.items()), flush=True)


def collect(model_dir: str, n: int, out: str) -> None:
    from mmfm.cli.molmo2 import _load_molmo2
    from mmfm.data.molmo2_world import WorldVideoData
    from mmfm.eval.molmo2_world import _points, ask_clip
    from mmfm.eval.video import _frame, point_at_score, st_point_scores, track_scores
    from mmfm.world.vocab import HELD_OUT_PAIRS

    torch.manual_seed(0)
    m = _load_molmo2(model_dir).eval()
    data = WorldVideoData(m, m._tok(), seed=0, size=m.config.vision.image_size)
    t0 = time.time()
    with open(out, "w") as f:
        for split in ("test", "heldout"):
            data.split = split
            for i in range(n):
                ex, c, tasks = data.example(i)
                tasks = [t for t in tasks if t["task"] in KINDS]
                answers = ask_clip(m, data, ex.context, ex.patches, ex.pooling, [t["question"] for t in tasks])
                objs = [{"shape": mv.obj.shape, "color": mv.obj.color, "start": mv.start,
                         "heldout": (mv.obj.color, mv.obj.shape) in HELD_OUT_PAIRS} for mv in c.movers]
                for t, a in zip(tasks, answers):
                    pts = _points(a, c)
                    landed = []
                    for tt, x, y in pts:
                        fr = _frame(tt, c.fps, len(c.frames))
                        inside = 0 <= int(x) < c.size and 0 <= int(y) < c.size
                        under = np.nonzero(c.masks[fr, :, int(y), int(x)])[0].tolist() if inside else []
                        landed.append({"t": tt, "frame": fr, "x": x, "y": y, "under": under})
                    rec = {"split": split, "clip": i, "task": t["task"], "question": t["question"], "answer": a,
                           "objects": objs, "points": landed, "truth": t.get("points", t.get("count"))}
                    if t["task"] == "point":
                        rec["shape"], rec["score"] = t["shape"], st_point_scores(pts, c, t["shape"])
                    elif t["task"] == "track":
                        rec["object"], rec["score"] = t["object"], track_scores(pts, c, t["object"])
                    elif t["task"] == "point_at":
                        rec["object"], rec["frame"] = t["object"], t["frame"]
                        rec["score"] = {"in_mask": point_at_score(pts, c, t["object"], t["frame"])}
                    f.write(json.dumps(rec) + "\n")
                print(f"{split} clip {i}: {time.time() - t0:.0f} s", flush=True)


def summarize(path: str) -> None:
    recs = [json.loads(line) for line in open(path)]
    for split in ("test", "heldout"):
        rs = [r for r in recs if r["split"] == split]
        print(f"== {split}")
        pts = [r for r in rs if r["task"] == "point"]
        if pts:
            shapes = Counter((len(r["truth"]), len(r["points"])) for r in pts)
            print(f"point questions {len(pts)}, F1 {np.mean([r['score']['f1'] for r in pts]):.3f}, "
                  f"(targets, points): {dict(sorted(shapes.items()))}")
            land, found = Counter(), defaultdict(list)
            for r in pts:
                targets = {j for _, j, _, _ in r["truth"]}
                for p in r["points"]:
                    u = p["under"]
                    land["background" if not u else "a target" if u[0] in targets else
                         "same shape, not a target" if r["objects"][u[0]]["shape"] == r["shape"] else
                         "another shape, held-out composition" if r["objects"][u[0]]["heldout"] else
                         "another shape"] += 1
                for _, j, _, _ in r["truth"]:
                    found[r["objects"][j]["heldout"]].append(any(j in p["under"] for p in r["points"]))
            print("  points land on:", dict(land))
            for held, v in sorted(found.items()):
                print(f"  targets of a {'held-out' if held else 'seen'} composition: {len(v)}, found {np.mean(v):.2f}")
        tracks = [r for r in rs if r["task"] == "track"]
        if tracks:
            by_frame, step, moved = defaultdict(list), defaultdict(list), defaultdict(list)
            still, cells = 0, []
            for r in tracks:
                truth = {int(round(t * 2)): (x, y) for t, _, x, y in r["truth"]}  # world clips: 2 fps
                pred = {p["frame"]: p for p in r["points"]}
                f0 = min(truth)
                still += len({(p["x"], p["y"]) for p in r["points"]}) == 1
                for k, (x, y) in truth.items():
                    p = pred.get(k)
                    by_frame[k - f0].append(p is not None and r["object"] in p["under"])
                    if p is not None:
                        cells.append((_cell(p["x"], p["y"], CELL) == _cell(x, y, CELL), r["object"] in p["under"]))
                    moved[k - f0].append(np.hypot(x - truth[f0][0], y - truth[f0][1]))
                    if p is not None and k - 1 in pred:
                        step[k - f0].append(np.hypot(p["x"] - pred[k - 1]["x"], p["y"] - pred[k - 1]["y"]))
            print(f"track questions {len(tracks)}, in-mask {np.mean([r['score']['in_mask'] for r in tracks]):.3f}, "
                  f"tracks with one place for every frame {still}")
            right = [inside for ok, inside in cells if ok]
            print(f"  track points in the object's {CELL} px cell {len(right) / max(len(cells), 1):.2f} of "
                  f"{len(cells)}; in the mask when in that cell {np.mean(right) if right else float('nan'):.2f}")
            for k in sorted(by_frame):
                print(f"  frame +{k}: in-mask {np.mean(by_frame[k]):.2f}, object moved {np.median(moved[k]):.1f} px, "
                      f"the point moved {np.median(step[k]) if step[k] else 0:.1f} px since the frame before")
        at = [r for r in rs if r["task"] == "point_at"]
        if at:
            print(f"point-at-a-time questions {len(at)}, in-mask {np.mean([r['score']['in_mask'] for r in at]):.3f}")
        counts = [r for r in rs if r["task"] == "count"]
        print("count (truth, answer):", Counter((r["truth"], r["answer"]) for r in counts).most_common(6))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a world Molmo2 folder (what `mmfm train molmo2` wrote)")
    ap.add_argument("--n", type=int, default=20, help="clips per split")
    ap.add_argument("--out", default="answers.jsonl")
    ap.add_argument("--summarize", help="a JSONL this script wrote: print where its answers land")
    ap.add_argument("--ceiling", action="store_true", help="in-mask of tracks that write the right cell's centre")
    a = ap.parse_args()
    if a.ceiling:
        ceiling(a.n)
        return
    if a.summarize:
        summarize(a.summarize)
        return
    if not a.model:
        ap.error("give --model DIR (or --summarize FILE)")
    collect(a.model, a.n, a.out)
    summarize(a.out)


if __name__ == "__main__":
    main()
