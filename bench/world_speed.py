"""Scenes per second of the Shapes world on one core: render + every annotation (masks, boxes,
captions, QA, points, hard negatives), at 64 px by default. Target: >= 1,000/s.

    python bench/world_speed.py [--size 64] [--n 3000]
"""

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from mmfm.world import World, render  # noqa: E402


def rate(fn, n: int) -> float:
    for i in range(min(100, n)):  # warm up
        fn(i)
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    world = World(seed=a.seed, size=a.size)
    full = rate(lambda i: world.sample("train", i), a.n)
    only = rate(lambda i: render(world.scene("train", i), a.size), a.n)
    cls = rate(lambda i: world.classification("train", i), a.n)
    print(f"world {a.size}px, one core:")
    print(f"  scene + all annotations : {full:8,.0f} scenes/s   (target >= 1,000)")
    print(f"  scene, rendering only   : {only:8,.0f} scenes/s")
    print(f"  classification sample   : {cls:8,.0f} images/s")


if __name__ == "__main__":
    main()
