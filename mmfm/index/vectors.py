"""The FAISS index over L2-normalised vectors (inner product = cosine), chosen by collection size as
clip-retrieval's autofaiss does: exact search while it is cheap, an inverted file (IVF, optionally with
product quantisation when the vectors would not fit in memory) or HNSW past that, with the recall of the
approximate index measured against exact search at build time and stored with it.

    kind     when (auto)                         what
    flat     N <= EXACT_MAX                      IndexFlatIP: exact, the default for personal folders
    ivf      N > EXACT_MAX                       IVF{nlist},Flat, nprobe raised until recall@10 >= target
    ivfpq    vectors over `max_memory_gb`        IVF{nlist},PQ{m}x8 (compressed), nprobe as above; the
                                                 10 x k best re-ranked exactly from vectors.npy (mmap)
    hnsw     asked for                           HNSW32, efSearch raised until recall@10 >= target
"""

from __future__ import annotations

import time

import numpy as np

from mmfm.errors import ConfigError

EXACT_MAX = 100_000
RERANK = 10  # IVF-PQ: candidates per result re-scored exactly from the stored (memory-mapped) vectors
KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")


def _faiss():
    import faiss

    return faiss


def choose_kind(n: int, dim: int, kind: str = "auto", max_memory_gb: float = 4.0) -> str:
    if kind not in KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    if n * dim * 4 > max_memory_gb * 2**30:
        return "ivfpq"
    return "flat" if n <= EXACT_MAX else "ivf"


def nlist_for(n: int) -> int:
    """Inverted lists: ~2 sqrt(N), at least 39 points per list to train on (FAISS warns below that)."""
    return int(max(1, min(2 * np.sqrt(n), n // 39)))


def sample_queries(x: np.ndarray, n: int = 200, seed: int = 0) -> np.ndarray:
    """Held-in queries for measuring recall: database vectors moved by noise of their own scale and
    renormalised (a query equal to a stored vector would make recall@1 trivially 1)."""
    rng = np.random.default_rng(seed)
    q = x[rng.choice(len(x), size=min(n, len(x)), replace=False)].astype(np.float32)
    q = q + rng.normal(scale=0.5 / np.sqrt(x.shape[1]), size=q.shape).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def recall_at(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    k = exact_ids.shape[1]
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx_ids, exact_ids)]))


def build(x: np.ndarray, kind: str = "auto", max_memory_gb: float = 4.0, target_recall: float = 0.95,
          seed: int = 0):
    """(faiss index, info) for the rows of `x` (N, D) float32, L2-normalised. info: kind, the search
    parameter chosen, recall@10 against exact on sampled queries, build seconds."""
    faiss = _faiss()
    n, d = x.shape
    kind = choose_kind(n, d, kind, max_memory_gb)
    t0 = time.perf_counter()
    info = {"kind": kind, "vectors": int(n), "dim": int(d)}
    if kind == "flat" or n == 0:
        index = faiss.IndexFlatIP(d)
        index.add(x)
        info.update(kind="flat", recall_at_10=1.0)
    else:
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.add(x)
        else:
            nlist = nlist_for(n)
            quantizer = faiss.IndexFlatIP(d)
            if kind == "ivfpq":
                m = next(m for m in (64, 32, 16, 8, 4, 2, 1) if d % m == 0 and m <= d)
                index = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
                info["pq_m"] = m
            else:
                index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            train = x[rng.choice(n, size=min(n, 64 * nlist), replace=False)] if n > 64 * nlist else x
            index.cp.seed = seed
            index.train(train)
            index.add(x)
            info["nlist"] = nlist
        info.update(tune(index, x, kind, target_recall, seed))
    info["build_s"] = round(time.perf_counter() - t0, 3)
    return index, info


def set_param(index, kind: str, value: int) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = int(value)
    elif kind in ("ivf", "ivfpq"):
        index.nprobe = int(value)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top k by inner product, without copying `x` into an index."""
    _, ids = _faiss().knn(np.ascontiguousarray(q, dtype=np.float32), np.ascontiguousarray(x, dtype=np.float32), k,
                          metric=_faiss().METRIC_INNER_PRODUCT)
    return ids


def rerank(vectors: np.ndarray, q: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row's candidate `ids` by exact inner product with the stored vectors (which
    may be memory-mapped: only the candidates' rows are read). -> (scores, ids), best first."""
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    for r, (row, cand) in enumerate(zip(q, ids)):
        cand = cand[cand >= 0]
        if not len(cand):
            continue
        order = np.unique(cand)  # sorted ids: sequential reads of the memory map
        scores = np.asarray(vectors[order], dtype=np.float32) @ row
        top = np.argsort(-scores, kind="stable")[:k]
        out_s[r, : len(top)], out_i[r, : len(top)] = scores[top], order[top]
    return out_s, out_i


def search(index, info: dict, vectors, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the k best for each query: IVF-PQ's compressed scores re-ranked exactly from the
    stored vectors over `rerank` x k candidates, every other kind as FAISS answers."""
    factor = int(info.get("rerank", 1))
    if factor <= 1:
        return index.search(q, k)
    _, cand = index.search(q, k * factor)
    return rerank(vectors, q, cand, k)


def tune(index, x: np.ndarray, kind: str, target: float, seed: int = 0) -> dict:
    """Raise nprobe (IVF) or efSearch (HNSW) until recall@10 against exact search reaches `target` on
    sampled queries; the first value that does is kept (or the largest tried). IVF-PQ is scored after
    re-ranking RERANK x k candidates exactly (its compressed scores alone miss most neighbours)."""
    q = sample_queries(x, seed=seed)
    k = min(10, len(x))
    truth = exact_topk(x, q, k)
    values = [1, 2, 4, 8, 16, 32, 64, 128, 256] if kind != "hnsw" else [16, 32, 64, 128, 256, 512]
    if kind != "hnsw":
        values = [v for v in values if v <= index.nlist] or [index.nlist]
    info = {"kind": kind, "rerank": RERANK} if kind == "ivfpq" else {"kind": kind}
    recall = 0.0
    for v in values:
        set_param(index, kind, v)
        _, got = search(index, info, x, q, k)
        recall = recall_at(got, truth)
        if recall >= target:
            break
    key = "ef_search" if kind == "hnsw" else "nprobe"
    return {key: int(v), "recall_at_10": round(recall, 4)} | ({"rerank": RERANK} if kind == "ivfpq" else {})


def apply_info(index, info: dict) -> None:
    """Restore the tuned search parameter after reading an index from disk."""
    if "nprobe" in info:
        set_param(index, info["kind"], info["nprobe"])
    if "ef_search" in info:
        set_param(index, "hnsw", info["ef_search"])


__all__ = ["build", "choose_kind", "tune", "search", "rerank", "exact_topk", "apply_info", "recall_at",
           "sample_queries", "KINDS", "EXACT_MAX", "RERANK"]
