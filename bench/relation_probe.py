"""Can an image tower learn "A left of B"? Relation-swap items of the world scored with the text side
replaced by an oracle: an MLP over the exact one-hot code (A's color, A's shape, relation, B's color,
B's shape), against the code with A and B exchanged (two-way softmax). Tower and MLP train together.

    python bench/relation_probe.py [--canonical] [--steps 600] [--items 10000] [--tower DIR | --fresh]

--canonical says every relation with "left of" or "above" ("B right of A" becomes "A left of B"): the
score is then a two-way product (noun order x layout) instead of a three-way one (x the relation word),
which is what makes the difference (bench/RESULTS.md, Compositionality, session 8).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

RELS = ("left of", "right of", "above", "below")
INVERSE = {0: 1, 1: 0, 2: 3, 3: 2}
MARGIN = 5  # pixels between centroids, as the world's REL_MARGIN at 64 px


def items(split: str, n: int, offset: int, canonical: bool, mean, std):
    from mmfm.world import World
    from mmfm.world.facts import visible_objects
    from mmfm.world.vocab import COLOR_NAMES, SHAPES

    colors, shapes = list(COLOR_NAMES), list(SHAPES)
    dim = 2 * len(colors) + 2 * len(shapes) + len(RELS)

    def code(a, b, rel):
        v = torch.zeros(dim)
        v[colors.index(a[0])] = v[len(colors) + shapes.index(a[1])] = 1
        v[len(colors) + len(shapes) + colors.index(b[0])] = v[2 * len(colors) + len(shapes) + shapes.index(b[1])] = 1
        v[2 * len(colors) + 2 * len(shapes) + rel] = 1
        return v

    world = World(seed=0, min_objects=2, max_objects=4)
    images, pos, neg = [], [], []
    i = offset
    while len(images) < n:
        s = world.sample(split, i)
        i += 1
        r, objs = s.rendered, s.rendered.scene.objects
        vis = visible_objects(r)
        count = Counter((objs[k].color, objs[k].shape) for k in vis)
        unique = [k for k in vis if count[(objs[k].color, objs[k].shape)] == 1]
        pairs = [(a, b, 0) for a in unique for b in unique if a != b and r.centroids[a][0] + MARGIN < r.centroids[b][0]]
        pairs += [
            (a, b, 2) for a in unique for b in unique if a != b and r.centroids[a][1] + MARGIN < r.centroids[b][1]
        ]
        if not pairs:
            continue
        rng = np.random.default_rng(i)
        a, b, rel = pairs[rng.integers(len(pairs))]
        if not canonical and rng.random() < 0.5:  # "B right of A": the same fact in the other direction
            a, b, rel = b, a, INVERSE[rel]
        na, nb = (objs[a].color, objs[a].shape), (objs[b].color, objs[b].shape)
        images.append(torch.from_numpy(r.image).permute(2, 0, 1))
        pos.append(code(na, nb, rel))
        neg.append(code(nb, na, rel))
    x = (torch.stack(images).float() / 255 - mean) / std
    return x, torch.stack(pos), torch.stack(neg)


def main() -> None:
    import mmfm
    from mmfm.models.clip import CLIP
    from mmfm.weights import path

    ap = argparse.ArgumentParser()
    ap.add_argument("--tower", default=None, help="CLIP folder (default: the shipped world CLIP)")
    ap.add_argument("--fresh", action="store_true", help="the same architecture, randomly initialised")
    ap.add_argument("--canonical", action="store_true", help="relations only as 'left of' / 'above'")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--every", type=int, default=100)
    args = ap.parse_args()
    torch.manual_seed(0)
    clip = mmfm.load(args.tower or path("clip-world-tiny")).float()
    if args.fresh:
        clip = CLIP(clip.config)
    mean = torch.tensor(clip.config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.config.image_std).view(1, 3, 1, 1)
    test = items("test", 400, 200_000, args.canonical, mean, std)
    train = items("train", args.items, 0, args.canonical, mean, std)
    head = torch.nn.Sequential(
        torch.nn.Linear(train[1].shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, clip.config.embed_dim)
    )
    opt = torch.optim.AdamW(list(clip.parameters()) + list(head.parameters()), lr=args.lr, weight_decay=0.0)

    def scores(x, p, n):
        img = F.normalize(clip.encode_image(x), dim=-1)
        return torch.stack(
            [(img * F.normalize(head(p), dim=-1)).sum(-1), (img * F.normalize(head(n), dim=-1)).sum(-1)], 1
        )

    def accuracy(data):
        clip.eval()
        with torch.no_grad():
            s = scores(*data)
        clip.train()
        return (s[:, 0] > s[:, 1]).float().mean().item()

    t0 = time.perf_counter()
    clip.train()
    for step in range(1, args.steps + 1):
        i = torch.randint(0, train[0].shape[0], (args.batch,))
        loss = F.cross_entropy(
            20 * scores(train[0][i], train[1][i], train[2][i]), torch.zeros(args.batch, dtype=torch.long)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            print(
                f"step {step:5d}  loss {loss.item():.3f}  held-out {accuracy(test):.3f}  "
                f"training items {accuracy(tuple(t[:400] for t in train)):.3f}  {time.perf_counter() - t0:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
