"""Shared by the benchmarks: the best of `repeats` timed calls after one warm-up call."""

from __future__ import annotations

import time


def timed(fn, repeats: int):
    """(best seconds, the warm-up call's result)."""
    out = fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), out
