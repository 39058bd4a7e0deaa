"""Fine-tuning on data written to disk in the ecosystem's formats, from world scenes of a kind the
starting model never saw, measured before and after (bench/RESULTS.md, "Your own data").

- CLIP: the shipped world CLIP, fine-tuned on an open_clip CSV of composite concepts (snowman, traffic
  light, ...: names its training text never used) mixed with ordinary scenes; zero-shot on an image
  folder of new concept images before / after, and the world's own zero-shot after (what was kept).
- SAM: a world SAM (trained here first: no SAM ships) fine-tuned on a COCO JSON whose objects are whole
  concepts (a snowman is one mask, not two circles); one-point and box mIoU on new concept images.
- LLaVA: the shipped world LLaVA, fine-tuned (stage 2, its LoRA adapters) on LLaVA JSON of a question type
  its data never asks ("Which object is furthest to the left?"); exact match and answer loss on new scenes.

    python bench/own_data.py --out runs/own_data [--only clip,sam,llava]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import torch

from mmfm import weights
from mmfm.world import World
from mmfm.world.export import export_world


def clip_demo(out: Path, steps: int) -> dict:
    from mmfm.eval.clip_world import zeroshot_world
    from mmfm.train.files import finetune_clip

    w = World(seed=0, size=64)
    concepts = export_world(w, out / "concepts", "csv", "concepts", n=700)
    scenes = export_world(w, out / "scenes", "csv", "scenes", n=700)
    rows = []
    for path in (concepts, scenes):  # one CSV, image paths relative to `out`
        with open(path, newline="") as f:
            rows += [(f"{path.parent.name}/{r['filepath']}", r["title"]) for r in csv.DictReader(f, delimiter="\t")]
    with open(out / "train.tsv", "w", newline="") as f:
        wr = csv.writer(f, delimiter="\t")
        wr.writerow(["filepath", "title"])
        wr.writerows(rows)
    test = export_world(w, out / "concepts_test", "imagefolder", "concepts", n=350, start=100_000)
    rep = finetune_clip(out / "train.tsv", weights.path("clip-world-tiny"), out / "run", val_data=test, steps=steps,
                        batch_size=64, lr=1e-4, warmup=10, progress=False)
    from mmfm import load

    start = load(weights.path("clip-world-tiny"))
    before_world = zeroshot_world(start, start.tokenizer, n=500)
    tuned = load(out / "run" / "model")
    after_world = zeroshot_world(tuned, tuned.tokenizer, n=500)
    rep["world_zeroshot_ensemble_top1"] = {
        when: {k: round(v["ensemble"]["top1"], 4) for k, v in r.items()}
        for when, r in (("before", before_world), ("after", after_world))
    }
    return rep


def sam_demo(out: Path, steps: int, world_steps: int) -> dict:
    from mmfm.train.files import finetune_sam
    from mmfm.train.sam import train_world_sam

    t0 = time.perf_counter()
    base = train_world_sam(out=out / "world_sam", steps=world_steps, evaluate=False, progress=False)
    w = World(seed=0, size=64)
    train = export_world(w, out / "coco_train", "coco", "concepts", n=600)
    val = export_world(w, out / "coco_val", "coco", "concepts", n=100, start=100_000)
    rep = finetune_sam(train, out / "world_sam" / "model", out / "run", val_data=val, steps=steps, batch_size=8,
                       lr=3e-4, warmup=10, progress=False)
    rep["world_sam_steps"] = world_steps
    rep["world_sam_seconds"] = base["train_seconds"]
    rep["total_seconds"] = round(time.perf_counter() - t0, 1)
    return rep


def llava_demo(out: Path, steps: int) -> dict:
    from mmfm.train.files import finetune_llava

    w = World(seed=0, size=64)
    train = export_world(w, out / "train", "llava", "leftmost", n=600)
    val = export_world(w, out / "val", "llava", "leftmost", split="test", n=100)
    return finetune_llava(train, None, out / "run", stage=2, val_data=val, steps=steps, batch_size=8, lr=2e-4,
                          warmup=10, progress=False, bf16=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/own_data"))
    ap.add_argument("--only", default="clip,sam,llava")
    ap.add_argument("--clip-steps", type=int, default=200)
    ap.add_argument("--sam-steps", type=int, default=200)
    ap.add_argument("--sam-world-steps", type=int, default=400)
    ap.add_argument("--llava-steps", type=int, default=120)
    a = ap.parse_args()
    res = {"host": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    for name in a.only.split(","):
        t0 = time.perf_counter()
        out = a.out / name
        out.mkdir(parents=True, exist_ok=True)
        if name == "clip":
            res[name] = clip_demo(out, a.clip_steps)
        elif name == "sam":
            res[name] = sam_demo(out, a.sam_steps, a.sam_world_steps)
        elif name == "llava":
            res[name] = llava_demo(out, a.llava_steps)
        res[name]["wall_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({name: {k: res[name].get(k) for k in ("before", "after", "first_loss", "last_loss",
                                                                "wall_seconds")}}, indent=1), flush=True)
    (a.out / "results.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
