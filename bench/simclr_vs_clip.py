"""The lecture's comparison: features learned without labels (SimCLR) + a linear probe, against language
supervision (CLIP's image tower, the same architecture and budget) + a probe, and CLIP's zero-shot; with
1, 10, 100 or all labelled examples per class; and SimCLR without colour jitter (the paper's colour
shortcut). A random-init tower is the floor. Writes results.json, table.md and probes.png to --out.

    mmfm train simclr --out runs/simclr && mmfm train simclr --no-color-jitter --out runs/simclr-nojitter
    python bench/simclr_vs_clip.py --simclr runs/simclr/model --nojitter runs/simclr-nojitter/model --out runs/cmp
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import mmfm
from mmfm import weights
from mmfm.eval.clip_world import zeroshot_world
from mmfm.eval.probes import probe_world
from mmfm.models.simclr import SimCLR
from mmfm.train.simclr import world_tiny_config
from mmfm.vision.plot import line_plot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--simclr", type=Path, required=True)
    ap.add_argument("--nojitter", type=Path, default=None)
    ap.add_argument("--clip", type=Path, default=weights.path("clip-world-tiny"))
    ap.add_argument("--out", type=Path, default=Path("runs/simclr_vs_clip"))
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--n-test", type=int, default=1000)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    models = {"SimCLR": mmfm.load(a.simclr), "CLIP image tower": mmfm.load(a.clip),
              "random init": SimCLR(world_tiny_config()).eval()}
    if a.nojitter:
        models["SimCLR, no colour jitter"] = mmfm.load(a.nojitter)
    res = {"host": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
           "n_train": a.n_train, "n_test": a.n_test, "probes": {}}
    for name, m in models.items():
        t0 = time.perf_counter()
        res["probes"][name] = probe_world(m.eval(), n_train=a.n_train, n_test=a.n_test)
        print(f"{name}: probes in {time.perf_counter() - t0:.0f} s", flush=True)
    clip = models["CLIP image tower"]
    zs = zeroshot_world(clip, clip.tokenizer, n=a.n_test)
    res["clip_zeroshot"] = {k: round(v["ensemble"]["top1"], 4) for k, v in zs.items()}
    (a.out / "results.json").write_text(json.dumps(res, indent=2))

    cols = [("color_shape", "1"), ("color_shape", "10"), ("color_shape", "100"), ("color_shape", "all")]
    lines = ["| features | colour x shape, 1 / 10 / 100 / all labels per class | 1-NN | colour seen / held-out "
             "| shape seen / held-out | size x colour x shape |", "| --- | --- | --- | --- | --- | --- |"]
    for name, p in res["probes"].items():
        cs = " / ".join(f"{p[t]['linear'][k]['seen']:.3f}" for t, k in cols)
        lines.append(f"| {name} | {cs} | {p['color_shape']['knn1']['seen']:.3f} | "
                     f"{p['color']['linear']['all']['seen']:.3f} / {p['color']['linear']['all']['heldout']:.3f} | "
                     f"{p['shape']['linear']['all']['seen']:.3f} / {p['shape']['linear']['all']['heldout']:.3f} | "
                     f"{p['size_color_shape']['linear']['all']['seen']:.3f} |")
    z = res["clip_zeroshot"]
    lines.append(f"| CLIP zero-shot (no labels) | {z['seen']:.3f} (seen), {z['heldout']:.3f} (held-out pairs) "
                 "| | | | |")
    chance = next(iter(res["probes"].values()))["color_shape"]["chance"]
    lines.append(f"\nChance: colour x shape {chance:.3f}.")
    (a.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    per_class = a.n_train / (1 / chance)
    xs = {"1": 0.0, "10": 1.0, "100": 2.0, "all": math.log10(per_class)}
    series = {name: [(xs[k], p["color_shape"]["linear"][k]["seen"]) for k in ("1", "10", "100", "all")]
              for name, p in res["probes"].items()}
    series["CLIP zero-shot"] = [(0.0, z["seen"]), (xs["all"], z["seen"])]
    line_plot(series, title="colour x shape top-1 on new scenes vs labels per class (log10)",
              xlabel="log10 labelled examples per class", markers=True).save(a.out / "probes.png")
    print(f"wrote {a.out / 'results.json'}, {a.out / 'table.md'}, {a.out / 'probes.png'}")


if __name__ == "__main__":
    main()
