"""What the world LLaVA's language model can read off its image tokens, for pointing (issue 29, point 2).
Linear probes (ridge) on the tokens the LM sees, 80 % of the objects to fit, 20 % to score:

1. Where inside its token is an object? For each visible object, the token whose cell holds the object's
   point (its `interior_points`): the cell's centre, and a linear map from that token's feature to the
   point's offset in the cell. Scored as a point is scored: inside the object's mask or not. This bounds
   what pointing "at the right token" can reach with 16 pooled tokens (4x4 cells of 16 px) or 64 (8 px).
2. Does a token know which token it is? A linear one-hot classifier from one token's feature to its own
   index in the grid (chance 1/16 or 1/64), at each hidden state of the tower and after the connector:
   the LM can only write coordinates if the image tokens carry their position (RoPE gives it the
   distance to each token, not the place in the image).

    python bench/pointing_probe.py [--model DIR] [--scenes 3000]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def ridge(x: np.ndarray, y: np.ndarray, k: int, lam: float = 1.0) -> np.ndarray:
    """Fit on the first k rows, predict the rest."""
    xa = np.c_[x, np.ones(len(x))]
    w = np.linalg.solve(xa[:k].T @ xa[:k] + lam * np.eye(xa.shape[1]), xa[:k].T @ y[:k])
    return xa[k:] @ w


def where_inside(feats: torch.Tensor, samples, size: int = 64) -> dict:
    from mmfm.world.annotate import interior_points

    g = int(round(feats.shape[1] ** 0.5))
    cell = size / g
    x, off, corner, who = [], [], [], []
    for n, s in enumerate(samples):
        for i, (px, py) in enumerate(interior_points(s.rendered)):
            if np.isnan(px):
                continue
            gx, gy = min(int(px // cell), g - 1), min(int(py // cell), g - 1)
            x.append(feats[n, gy * g + gx].numpy())
            off.append((px - gx * cell, py - gy * cell))
            corner.append((gx * cell, gy * cell))
            who.append((n, i))
    x, off, corner = np.array(x), np.array(off), np.array(corner)
    k = int(0.8 * len(x))

    def in_mask(pred: np.ndarray) -> float:
        at = np.clip(pred + corner[k:], 0, size - 1).astype(int)
        hits = [samples[n].rendered.masks[i, y, x] for (n, i), (x, y) in zip(who[k:], at)]
        return float(np.mean(hits))

    return {"tokens": g * g, "objects": len(x), "cell centre in mask": in_mask(np.full((len(x) - k, 2), cell / 2)),
            "linear offset in mask": in_mask(ridge(x, off, k))}


def own_index(feats: torch.Tensor) -> float:
    n, t, d = feats.shape
    x, idx = feats.reshape(n * t, d).numpy(), np.tile(np.arange(t), n)
    k = int(0.8 * len(x))
    return float((ridge(x, np.eye(t)[idx], k).argmax(1) == idx[k:]).mean())


def main() -> None:
    import mmfm
    from mmfm.data.llava_world import world_pixels
    from mmfm.weights import path as weights_path
    from mmfm.world import World

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="A world LLaVA folder (default: the shipped one).")
    ap.add_argument("--scenes", type=int, default=3000)
    args = ap.parse_args()
    model = mmfm.load(args.model or weights_path("llava-world-tiny")).eval()
    world = World(seed=0)
    samples = [world.sample("train", i) for i in range(args.scenes)]
    pixels = world_pixels([s.rendered.image for s in samples], model.config.image_mean, model.config.image_std)
    v, pool = model.vision, model.projector.pool
    with torch.no_grad():
        x = v.ln_pre(v.embed(pixels[:400]))
        states = [x]
        for blk in v.transformer.blocks:
            x = blk(x)
            states.append(x)
        for i, s in enumerate(states):
            print(f"tower hidden state {i}: a token's own index from its feature (64 tokens): "
                  f"{own_index(s[:, v.num_prefix_tokens:]):.3f}")
        for p in (2, 1):
            model.projector.pool = p
            feats = torch.cat([model.encode_images(pixels[j : j + 200]) for j in range(0, len(pixels), 200)])
            r = where_inside(feats, samples)
            print(f"connector, {r['tokens']} tokens: own index {own_index(feats[:400]):.3f}; "
                  f"{r['objects']} objects: cell centre in the mask {r['cell centre in mask']:.3f}, "
                  f"linear offset in the mask {r['linear offset in mask']:.3f}")
        model.projector.pool = pool


if __name__ == "__main__":
    main()
