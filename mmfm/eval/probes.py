"""What frozen image features hold, read by probes on single-object world scenes: logistic regression
(CLIP's protocol, `mmfm.eval.linear_probe`) and k-NN ("1-NN with the vectors as training data"), for
colour, shape, colour x shape and size x colour x shape, with 1, 10, 100 or all labelled examples per
class. Probes are fit on scenes of seen compositions (the world's `val` split) and scored on new scenes of
seen compositions (`test`) and, for colour and shape, of held-out compositions (`heldout`): a colour
probe that still works on a colour x shape pair never seen asks whether colour is coded apart from
shape. The L2 penalty is picked on a separate labelled set (500 scenes) for each target.

Works on any model with `encode_image(pixels, normalize=)` and a config with `vision.image_size`,
`image_mean`, `image_std` (SimCLR, CLIP, CoCa)."""

from __future__ import annotations

import numpy as np
import torch

from mmfm.eval.linear_probe import accuracy, fit_logistic
from mmfm.eval.zeroshot import encode_images
from mmfm.world import ALL_PAIRS, World
from mmfm.world.vocab import COLOR_NAMES, SHAPES, SIZE_NAMES

TARGETS = ("color", "shape", "color_shape", "size_color_shape")
WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)


def _labels(items) -> dict[str, torch.Tensor]:
    out = {t: [] for t in TARGETS}
    for r, k in items:
        c, s = ALL_PAIRS[k]
        out["color"].append(COLOR_NAMES.index(c))
        out["shape"].append(SHAPES.index(s))
        out["color_shape"].append(k)
        out["size_color_shape"].append(k * len(SIZE_NAMES) + SIZE_NAMES.index(r.scene.objects[0].size))
    return {t: torch.tensor(v) for t, v in out.items()}


@torch.no_grad()
def world_features(model, split: str, n: int, offset: int = 0, seed: int = 0, batch: int = 256):
    """(features (n, D) L2-normalised, labels per target) of single-object scenes of `split`."""
    c = model.config
    world = World(seed=seed, size=c.vision.image_size)
    items = [world.classification(split, offset + i) for i in range(n)]
    x = torch.stack([torch.from_numpy(r.image).permute(2, 0, 1) for r, _ in items]).float() / 255.0
    x = (x - torch.tensor(c.image_mean).view(1, 3, 1, 1)) / torch.tensor(c.image_std).view(1, 3, 1, 1)
    return encode_images(model, x, batch), _labels(items)


def few_shot_indices(y: torch.Tensor, k: int | None, seed: int) -> torch.Tensor:
    """Indices with at most k examples of each class (all when k is None), seeded."""
    if k is None:
        return torch.arange(len(y))
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(y.numpy() == c))[:k] for c in np.unique(y.numpy())]
    return torch.from_numpy(np.sort(np.concatenate(idx)))


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 1) -> float:
    """Cosine k-NN (majority of the k nearest, ties to the nearest)."""
    sim = test_x @ train_x.T
    top = sim.topk(min(k, len(train_y)), dim=1).indices
    votes = train_y[top]
    pred = torch.mode(votes, dim=1).values if k > 1 else votes[:, 0]
    return (pred == test_y).float().mean().item()


def fit_probe(x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, n_classes: int):
    """A logistic-regression probe on (x, y), its L2 penalty the best of WEIGHT_DECAYS on (val_x, val_y)."""
    wd = max(WEIGHT_DECAYS, key=lambda w: (accuracy(fit_logistic(x, y, n_classes, w), val_x, val_y), w))
    return fit_logistic(x, y, n_classes, wd)


def probe_world(model, n_train: int = 6000, n_val: int = 500, n_test: int = 1000, seed: int = 0,
                shots=(1, 10, 100, None)) -> dict:
    """{target: {"linear": {shots: {"seen": top-1, "heldout": top-1}}, "knn1": ..., "knn20": ...}} (shots
    "all" for None; held-out scores for colour and shape only: the other targets' classes are unseen)."""
    xtr, ytr = world_features(model, "val", n_train, 0, seed)
    xva, yva = world_features(model, "val", n_val, 50_000, seed)
    tests = {"seen": world_features(model, "test", n_test, 0, seed),
             "heldout": world_features(model, "heldout", n_test, 0, seed)}
    out = {}
    for t in TARGETS:
        n_classes = int(max(ytr[t].max(), yva[t].max(), *(y[t].max() for _, y in tests.values()))) + 1
        scored = ("seen", "heldout") if t in ("color", "shape") else ("seen",)
        lin = {}
        for k in shots:
            idx = few_shot_indices(ytr[t], k, seed)
            clf = fit_probe(xtr[idx], ytr[t][idx], xva, yva[t], n_classes)
            lin["all" if k is None else str(k)] = {s: round(accuracy(clf, tests[s][0], tests[s][1][t]), 4)
                                                   for s in scored}
        out[t] = {"linear": lin, "chance": round(1.0 / len(torch.unique(ytr[t])), 4)}
        for kk in (1, 20):
            out[t][f"knn{kk}"] = {s: round(knn_accuracy(xtr, ytr[t], tests[s][0], tests[s][1][t], kk), 4)
                                  for s in scored}
    return out


__all__ = ["probe_world", "world_features", "fit_probe", "few_shot_indices", "knn_accuracy", "TARGETS"]
