"""Process settings that make PyTorch on a CPU faster, applied by the `mmfm` command, the benchmarks
and the tests (a library import changes nothing).

glibc serves every allocation above its mmap threshold (128 KB at first) with a fresh mmap and
returns it on free, so each activation tensor of a forward pass page-faults its memory in again,
which is expensive in a virtual machine (measured: bench/RESULTS.md). PyTorch's CPU tuning guide says
the same (it preloads jemalloc or tcmalloc); `mallopt` gets the effect without a preload.
MMFM_MALLOC_DEFAULTS=1 leaves glibc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
_done = False


def tune_malloc() -> bool:
    """Keep freed large blocks in glibc's heap (mmap threshold 32 MB, trim threshold 1 GB, top pad
    64 MB). Returns True when applied (Linux with glibc, not opted out)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("MMFM_MALLOC_DEFAULTS") == "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
              and libc.mallopt(_M_TOP_PAD, 64 << 20) == 1 and libc.mallopt(_M_ARENA_MAX, 1) == 1)
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    _done = ok
    return ok


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS now (glibc's malloc_trim). A loader that converts weights
    piece by piece calls it between pieces: glibc keeps most freed blocks of a few MB in its heap, and
    a file's worth of scratch then adds up in the process's peak memory."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


__all__ = ["release_freed_memory", "tune_malloc"]
