"""Shared by the benchmarks: the best of `repeats` timed calls after one warm-up call. Importing it
applies mmfm's allocator setting to the whole process, so every library compared runs with it."""

from __future__ import annotations

import time

from mmfm.runtime import tune_malloc

tune_malloc()


def timed(fn, repeats: int):
    """(best seconds, the warm-up call's result)."""
    out = fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), out


def timed_pair(fa, fb, repeats: int):
    """(best seconds of fa, of fb, fa's warm-up result, fb's): the calls alternate a, b, a, b, ..., so a
    slow spell on a shared machine hits both sides instead of whichever happened to run then."""
    out_a, out_b = fa(), fb()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, ts in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return min(ta), min(tb), out_a, out_b
