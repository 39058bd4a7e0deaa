"""The tests run with the allocator setting the `mmfm` command uses (see mmfm.runtime), and keep the
precision measurements of `--precision auto` in a folder of their own (not the user's ~/.cache).

The test command runs them in two pytest-xdist workers, one file per worker at a time (`-n 2 --dist
loadfile`): most tests spend their time in Python, imports and small tensors, where a second thread buys
little, so two one-thread workers finish the suite sooner than one two-thread process. Each worker gets
its share of the CPUs (PyTorch and the processes a test starts: OMP_NUM_THREADS), and files holding slow
learning tests are handed out first, so the longest one does not start last (`--no-loadscope-reorder`
keeps this order: xdist would otherwise hand out the files with the most tests first). Measured on 2
AVX2-only cores: 1,857 s, against 2,490 s in xdist's own order and ~3,000 s in one process."""

import os
import tempfile

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = str(max(1, len(os.sched_getaffinity(0)) // _workers))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _threads

import torch  # noqa: E402  (after OMP_NUM_THREADS, which it reads once)

from mmfm.runtime import tune_malloc  # noqa: E402

if _workers > 1:
    torch.set_num_threads(int(_threads))

os.environ.setdefault("MMFM_CACHE_DIR", tempfile.mkdtemp(prefix="mmfm-test-cache-"))

tune_malloc()

# the slowest first (measured seconds on 2 cores, rounded); the other files with slow tests follow them
_FIRST = ("test_sam_learning.py", "test_course.py", "test_clip_learning.py", "test_llava_world.py")


def pytest_collection_modifyitems(config, items):
    slow = {item.path for item in items if item.get_closest_marker("slow")}

    def order(item):
        name = item.path.name
        return (_FIRST.index(name) if name in _FIRST else len(_FIRST) + (item.path not in slow))

    items.sort(key=order)  # stable: the order inside each file is kept
