"""CoCa on the Shapes world: captions of new scenes scored against every reference caption of the
scene (COCO-style multi-reference BLEU-4 and CIDEr-D), and zero-shot classification as for CLIP."""

from __future__ import annotations

import torch

from mmfm.eval.captioning import caption_scores
from mmfm.eval.clip_world import _pixels, zeroshot_world
from mmfm.world import World

SPLITS = {"seen": "test", "heldout": "heldout"}  # new scenes of seen compositions / scenes with held-out ones


@torch.inference_mode()
def captioning_world(model, n: int = 500, seed: int = 0, num_beams: int = 1, max_objects: int = 4,
                     batch_size: int = 125, examples: int = 5) -> dict:
    """{"seen": {"BLEU-4":, "CIDEr-D":, ..., "examples": [...]}, "heldout": {...}}."""
    world = World(seed=seed, size=model.config.vision.image_size, max_objects=max_objects)
    out = {}
    for name, split in SPLITS.items():
        refs, hyps = {}, {}
        for start in range(0, n, batch_size):
            items = [world.captioned(split, i) for i in range(start, min(n, start + batch_size))]
            captions = model.caption(_pixels(model, [r for r, _ in items]), num_beams=num_beams)
            for k, ((_, caps), hyp) in enumerate(zip(items, captions)):
                refs[start + k] = [c.text for c in caps]
                hyps[start + k] = [hyp]
        res = caption_scores(refs, hyps)
        res["examples"] = [{"caption": hyps[i][0], "references": refs[i]} for i in range(min(examples, n))]
        out[name] = res
    return out


def evaluate_coca_world(model, n: int = 500, seed: int = 0, num_beams: int = 1) -> dict:
    return {"captioning": captioning_world(model, n=n, seed=seed, num_beams=num_beams),
            "zeroshot": zeroshot_world(model, model.tokenizer, n=2 * n, seed=seed)}
