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
    """(seconds of fa, of fb: one (ta, tb) pair per repeat; fa's warm-up result, fb's). The calls
    alternate a, b, a, b, ..., so a slow spell on a shared machine hits both sides of a pair instead
    of whichever happened to run then: the median of ta / tb over the pairs is the steadier ratio."""
    out_a, out_b = fa(), fb()
    pairs = []
    for _ in range(repeats):
        pair = []
        for fn in (fa, fb):
            t = time.perf_counter()
            fn()
            pair.append(time.perf_counter() - t)
        pairs.append(tuple(pair))
    return pairs, out_a, out_b
