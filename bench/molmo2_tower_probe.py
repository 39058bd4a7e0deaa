"""Does a world Molmo2's vision tower code shape apart from colour? (issue 25, held-out pointing)

"Point to every heart." asks for a shape in any colour; the held-out videos hold colour x shape pairs that
no training image drew (a blue heart). A linear probe reads each object's shape off the features the
Molmo2 adapter pools (the tower's `feature_layers`, one vector per 8-px patch): the patches' features
averaged with the share of each patch the object covers. It is fit on objects of world scenes of the
`train` split (seen pairs only), its L2 penalty picked on `val`, and scored on new scenes: `test` objects,
and `heldout` objects of seen pairs and of the held-out pairs. A probe that holds on seen pairs and fails
on held-out ones says the tower codes the pairs, not the shape, and an adapter trained on seen pairs
cannot read what is not there. The last column fits and scores the probe on the same scenes drawn in grey
(the mean of the channels): the shape is in the pixels either way.

    python bench/molmo2_tower_probe.py                                    # the shipped molmo2-world-video
    python bench/molmo2_tower_probe.py --model DIR --model clip-world-tiny --layers 2,0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import mmfm
from mmfm.eval.linear_probe import linear_probe
from mmfm.models.molmo2 import Molmo2
from mmfm.vision.transforms import greyscale
from mmfm.world import World
from mmfm.world.vocab import HELD_OUT_PAIRS, SHAPES


def tower(name: str) -> Molmo2:
    """A Molmo2 folder or name as it is; a CLIP's image tower put into the shipped Molmo2 (same ViT)."""
    model = mmfm.load(name)
    if isinstance(model, Molmo2):
        return model.float().eval()
    from mmfm.lm.frozen_base import tower_state

    host = mmfm.load("molmo2-world-video").float().eval()
    sd = {k[len("vision."):]: t for k, t in tower_state(model.float(), host.vision.vit).items()}
    host.vision.vit.load_state_dict(sd)
    return host


@torch.no_grad()
def objects(model: Molmo2, split: str, n: int, layers: list[int], grey: bool):
    """(features (M, D), shape labels (M,), held-out pair (M,)) of the objects of n scenes of `split` with
    at least a fifth of a patch in view."""
    world, g = World(size=model.config.vision.image_size), model.config.vision.image_size // 8
    xs, ys, unseen = [], [], []
    for i in range(n):
        s = world.sample(split, i)
        img = greyscale(s.rendered.image) if grey else s.rendered.image
        _, patches, _ = model.video_context(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous(), [0.0])
        f = model.vision.features(patches, layers)[0]  # (g * g, D)
        for o, mask in zip(s.rendered.scene.objects, s.rendered.masks):
            cover = torch.from_numpy(mask.reshape(g, 8, g, 8).mean((1, 3)).reshape(-1).astype(np.float32))
            if cover.sum() < 0.2:
                continue
            xs.append((cover[:, None] * f).sum(0) / cover.sum())
            ys.append(SHAPES.index(o.shape))
            unseen.append((o.color, o.shape) in HELD_OUT_PAIRS)
    return torch.stack(xs), torch.tensor(ys), torch.tensor(unseen)


def probe(model: Molmo2, layers: list[int], n: int, grey: bool) -> dict:
    tr, va, te, ho = (objects(model, s, k, layers, grey) for s, k in
                      (("train", n), ("val", n // 3), ("test", n // 3), ("heldout", n // 2)))
    mu, sd = tr[0].mean(0), tr[0].std(0) + 1e-6
    z = lambda x: (x - mu) / sd  # noqa: E731
    out = {}
    for name, (x, y) in {"test": (te[0], te[1]), "heldout seen": (ho[0][~ho[2]], ho[1][~ho[2]]),
                         "heldout unseen": (ho[0][ho[2]], ho[1][ho[2]])}.items():
        out[name] = linear_probe((z(tr[0]), tr[1]), (z(va[0]), va[1]), (z(x), y), len(SHAPES))["top1"]
    out["unseen objects"] = int(ho[2].sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="Molmo2 or CLIP (its tower in the Molmo2); repeatable")
    ap.add_argument("--layers", default=None, help="tower blocks read, e.g. 2,0 (default: the adapter's)")
    ap.add_argument("--scenes", type=int, default=600, help="train scenes (val, test a third, held-out half)")
    args = ap.parse_args()
    print("| tower | layers | test (seen pairs) | held-out, seen pairs | held-out, unseen pairs | "
          "grey: held-out, unseen pairs |\n| --- | --- | --- | --- | --- | --- |")
    for name in args.model or ["molmo2-world-video"]:
        model = tower(name)
        layers = [int(k) for k in args.layers.split(",")] if args.layers else model._layers()
        colour, grey = probe(model, layers, args.scenes, False), probe(model, layers, args.scenes, True)
        print(f"| {name} | {','.join(map(str, layers))} | {colour['test']:.3f} | {colour['heldout seen']:.3f} | "
              f"{colour['heldout unseen']:.3f} ({colour['unseen objects']}) | {grey['heldout unseen']:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
