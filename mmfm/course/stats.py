"""Intervals for the report: every number a claim rests on comes with one.

A percentile bootstrap over the evaluated items (images, points, questions) for a mean, and a paired
one for a difference measured on the same items (best-of-3 minus single on the same points), which is
much tighter than two separate intervals; Wilson's interval for a proportion when only the count is
known; mean and spread when the unit is a training seed."""

from __future__ import annotations

import math

import numpy as np


def bootstrap(values, reps: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of `values` (n,) with a percentile bootstrap interval."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (reps, v.size))].mean(1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def paired(a, b, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of a - b over the same items."""
    return bootstrap(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), reps, seed)


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """(p, low, high): Wilson score interval of a proportion p measured on n items."""
    if n <= 0:
        return (p, float("nan"), float("nan"))
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (p, max(0.0, c - h), min(1.0, c + h))


def over_seeds(values) -> tuple[float, float, float]:
    """(mean, min, max) over training seeds: with 3 seeds the range says more than a t interval."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.min()), float(v.max())


def fmt(m: tuple[float, float, float], digits: int = 3) -> str:
    mean, lo, hi = m
    if not math.isfinite(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
