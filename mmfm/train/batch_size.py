"""The batch-size experiment: the same world CLIP trained on the same number of seen image-text pairs
at several batch sizes, then scored on fine-grained classes (size x color x shape, 2 x 8 x 7 = 112
classes, one object per image) and on the world's swap suite (attribute / relation swaps, word order).

The course's claim: bigger contrastive batches hold more (and harder) negatives, which teaches finer
distinctions; but no batch size teaches word order, because a batch of random captions almost never
contains a caption's own swap. The learning rate follows the square root of the batch (a common rule
for Adam), warmup is 10% of the steps; everything else is the world-tiny preset.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from mmfm.errors import ConfigError
from mmfm.eval.clip_world import _pixels, zeroshot_world
from mmfm.eval.compositionality import clip_scorer
from mmfm.eval.world_compositionality import world_items, world_suite
from mmfm.eval.zeroshot import build_classifier, encode_images
from mmfm.models.clip import CLIP
from mmfm.text.tokenizer import CLIPTokenizer
from mmfm.train.clip import CLIPTrainModule, WorldCLIPData, preset
from mmfm.train.trainer import Trainer
from mmfm.vision.plot import line_plot
from mmfm.world import World
from mmfm.world.vocab import SEEN_PAIRS, SIZE_NAMES

BATCHES = (8, 32, 128, 512)


@torch.no_grad()
def fine_grained_zeroshot(model, n: int = 1000, seed: int = 0) -> float:
    """Top-1 over the 112 size x color x shape classes on new single-object scenes (seen compositions)."""
    world = World(seed=seed, size=model.config.vision.image_size)
    classes = [f"{z} {c} {s}" for z in SIZE_NAMES for c, s in SEEN_PAIRS]
    rendered, labels = [], []
    for i in range(n):
        r, _ = world.classification("test", 300_000 + i)
        o = r.scene.objects[0]
        rendered.append(r)
        labels.append(classes.index(f"{o.size} {o.color} {o.shape}"))
    clf = build_classifier(model, model.tokenizer, classes, ("a photo of {a} {}",))
    f = encode_images(model, _pixels(model, rendered))
    return float(((f @ clf).argmax(1) == torch.tensor(labels)).float().mean())


def run_batch_size_experiment(out="runs/batch_size", batches=BATCHES, pairs: int = 51_200, seed: int = 0,
                              eval_n: int = 500, scenes: int = 24_000, progress: bool = True) -> dict:
    """Train one world-tiny CLIP per batch size on `pairs` seen pairs each; write results.json and
    batch_size.png. Returns {batch: {steps, lr, fine_grained, zeroshot_seen, swaps...}}."""
    if any(pairs % b for b in batches):
        raise ConfigError(f"pairs ({pairs}) must be a multiple of every batch size {list(batches)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config, base, extra = preset("world-tiny")
    data = None
    results: dict = {}
    items = world_items(eval_n, seed=seed)  # the same swap items for every model
    for b in batches:
        t0 = time.perf_counter()
        steps = pairs // b
        tcfg = base.__class__(**{**base.__dict__})
        tcfg.update(steps=steps, batch_size=b, lr=base.lr * math.sqrt(b / base.batch_size), warmup=max(1, steps // 10),
                    seed=seed, log_every=max(1, steps // 50))
        tcfg.progress = progress
        if data is None:
            data = WorldCLIPData.build(
                config, scenes, b, seed=seed, max_objects=extra["max_objects"], progress=progress
            )
        data.batch_size = b
        torch.manual_seed(seed)
        model = CLIP(config)
        model.tokenizer = CLIPTokenizer.world(context_length=config.text.context_length)
        Trainer(CLIPTrainModule(model), tcfg, lambda s, m, r, w, tc=tcfg, d=data: d.batch(s, m, r, w, tc.accum),
                out / f"b{b}").train()
        model.eval()
        zs = zeroshot_world(model, model.tokenizer, n=eval_n, seed=seed)
        suite = world_suite(clip_scorer(model), items=items)
        results[b] = {
            "steps": steps,
            "lr": tcfg.lr,
            "seconds": round(time.perf_counter() - t0, 1),
            "fine_grained": fine_grained_zeroshot(model, n=eval_n, seed=seed),
            "zeroshot_seen": zs["seen"]["single"]["top1"],
            "zeroshot_heldout": zs["heldout"]["single"]["top1"],
            **{k: v["accuracy"] for k, v in suite.items()},
        }
        (out / "results.json").write_text(json.dumps(results, indent=2))
    keys = ("fine_grained", "zeroshot_seen", "attribute_swap", "relation_swap", "word_order")
    series = {k: [(b, r[k]) for b, r in results.items()] for k in keys}
    line_plot(series, title=f"world CLIP, {pairs} pairs each: accuracy vs batch size", xlabel="batch size",
              ylabel="accuracy", markers=True, log_x=True).save(out / "batch_size.png")
    return results


def format_results(results: dict) -> str:
    keys = (
        "fine_grained",
        "zeroshot_seen",
        "zeroshot_heldout",
        "attribute_swap",
        "relation_swap",
        "word_order",
        "replace",
    )
    lines = [f"{'batch':>6}{'steps':>7} " + "".join(f"{k:>17}" for k in keys)]
    for b, r in results.items():
        lines.append(f"{b:>6}{r['steps']:>7} " + "".join(f"{r[k]:>17.3f}" for k in keys))
    return "\n".join(lines)


__all__ = ["run_batch_size_experiment", "fine_grained_zeroshot", "format_results", "BATCHES"]
