"""Linear probe on frozen features (CLIP's protocol): multinomial logistic regression on cached,
L2-normalised image features, the L2 penalty chosen by a sweep on a validation split, then scored on
the test split."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float, max_iter: int = 200
) -> torch.nn.Linear:
    """Full-batch L-BFGS on mean cross-entropy + weight_decay * ||W||^2 / 2 (deterministic)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], n_classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + 0.5 * weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def accuracy(lin: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (lin(x).argmax(1) == y).float().mean().item()


def linear_probe(train: tuple, val: tuple, test: tuple, n_classes: int, weight_decays=DEFAULT_WEIGHT_DECAYS) -> dict:
    """Each split is (features (N, D), labels (N,)). Returns test top-1, the chosen weight decay and
    the validation accuracy of every value swept."""
    sweep = {}
    for wd in weight_decays:
        sweep[wd] = accuracy(fit_logistic(*train, n_classes, wd), *val)
    best = max(sweep, key=lambda k: (sweep[k], k))
    lin = fit_logistic(torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]]), n_classes, best)
    return {"top1": accuracy(lin, *test), "weight_decay": best, "val_sweep": {str(k): v for k, v in sweep.items()}}
