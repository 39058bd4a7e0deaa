"""Photo-index search speed: the FAISS index mmfm chooses vs exact search, and mmfm's search path vs
calling FAISS directly, at 10^5 and 10^6 synthetic vectors of dimension 512.

    python bench/search_speed.py [--sizes 100000 1000000] [--queries 1000]

The vectors are clustered (4,096 Gaussian clusters on the unit sphere, renormalised), because CLIP
embeddings are: on uniform noise no approximate index finds neighbours. Recall@10 is measured on held-out
queries (not the ones the index was tuned on) against exact inner-product search. Queries/s are one query
at a time (interactive use) and in batches of 100. Memory: the serialised index size and the process's
peak RSS growth while building it. Overhead: `PhotoIndex.search` (what `mmfm search` and the server call)
against `index.faiss.search` on the same index, one query at a time, k = 20; and the same with every hit's
path read (a lookup in a list of N strings, which any caller of FAISS pays to turn ids into files).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def clustered(n: int, d: int, seed: int, centers: int = 4096, chunk: int = 200_000) -> np.ndarray:
    """n points around `centers` fixed cluster centres (the same for every seed: queries of seed 1 are
    new points of the same clusters as the database of seed 0)."""
    c = np.random.default_rng(12345).normal(size=(centers, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = c[rng.integers(0, centers, m)] + rng.normal(scale=0.9 / np.sqrt(d), size=(m, d)).astype(np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def qps(fn, queries: np.ndarray, batch: int, budget_s: float = 5.0) -> float:
    """Queries per second over `budget_s` seconds, cycling through `queries`."""
    done, t0 = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - t0 < budget_s:
        start = done % len(queries)
        fn(queries[start : start + batch])
        done += batch
    return done / (time.perf_counter() - t0)


def main() -> None:
    import faiss

    from mmfm.index.store import FileRecord, PhotoIndex, write_generation
    from mmfm.index.vectors import build, recall_at
    from mmfm.index.vectors import search as vsearch

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--kinds", nargs="+", default=["auto", "ivf", "ivfpq", "hnsw"])
    args = ap.parse_args()
    print(f"threads {faiss.omp_get_max_threads()}, faiss {faiss.__version__}, cpus {os.cpu_count()}")
    print("| vectors | index | build s | index MB | peak RSS growth MB | recall@10 | q/s (1 at a time) | "
          "q/s (batches of 100) | exact q/s (1 / 100) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    overhead_rows = []
    for n in args.sizes:
        x = clustered(n, args.dim, seed=0)
        q = clustered(args.queries, args.dim, seed=1)  # the same clusters, new points: held out
        exact = faiss.IndexFlatIP(args.dim)
        exact.add(x)
        _, truth = exact.search(q, 10)
        e1 = qps(lambda b: exact.search(b, 10), q, 1)
        e100 = qps(lambda b: exact.search(b, 10), q, 100)
        for kind in args.kinds:
            if kind == "ivf" and n > 100_000:
                continue  # auto already is IVF there
            if kind == "hnsw" and n > 200_000:
                continue  # HNSW's build at 10^6 takes tens of minutes on 2 cores
            rss0 = peak_rss_mb()
            t0 = time.perf_counter()
            index, info = build(x, kind=kind)
            build_s = time.perf_counter() - t0
            rss = peak_rss_mb() - rss0
            size_mb = len(faiss.serialize_index(index)) / 2**20
            _, got = vsearch(index, info, x, q, 10)  # IVF-PQ: re-ranked from the full vectors, as PhotoIndex does
            rec = recall_at(got, truth)
            r1 = qps(lambda b, index=index, info=info: vsearch(index, info, x, b, 10), q, 1)
            r100 = qps(lambda b, index=index, info=info: vsearch(index, info, x, b, 10), q, 100)
            label = f"{kind} -> {info['kind']}" if kind == "auto" else info["kind"]
            param = {k: info[k] for k in ("nlist", "nprobe", "ef_search", "pq_m", "rerank") if k in info}
            print(f"| {n:,} | {label} {param or ''} | {build_s:.1f} | {size_mb:.0f} | {rss:.0f} | {rec:.3f} | "
                  f"{r1:,.0f} | {r100:,.0f} | {e1:,.0f} / {e100:,.0f} |", flush=True)
            if kind == "auto":
                with tempfile.TemporaryDirectory() as tmp:
                    files = [FileRecord(f"images/{i:07d}.png", 1, 1) for i in range(n)]
                    write_generation(Path(tmp), {"root": tmp, "model": "synthetic", "fingerprint": "-",
                                                 "dim": args.dim, "faiss": info}, files, x, index, [])
                    pi = PhotoIndex(tmp)
                    def read_paths(b):  # what the CLI and the server do next: every hit's relative path
                        return [h.rel for h in pi.search(b, 20)[0]]

                    rounds = [(qps(lambda b: pi.faiss.search(b, 20), q, 1, 1.0),  # alternated, best of 5:
                               qps(lambda b: pi.search(b, 20), q, 1, 1.0),  # no order effect
                               qps(read_paths, q, 1, 1.0)) for _ in range(5)]
                    best = [max(r[j] for r in rounds) for j in range(3)]
                    overhead_rows.append((n, info["kind"], *best))
                    pi.close()
            del index
    print("\n| vectors | index | FAISS direct q/s | PhotoIndex.search q/s | overhead | + every hit's path read q/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n, kind, direct, ours, paths in overhead_rows:
        print(f"| {n:,} | {kind} | {direct:,.0f} | {ours:,.0f} | {100 * (direct / ours - 1):+.1f}% | {paths:,.0f} |")


if __name__ == "__main__":
    main()
