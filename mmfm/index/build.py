"""`mmfm index PHOTOS/ --out photos.mmfm`: embed every image under a folder with a CLIP, incrementally.

A run compares the folder with the index's current generation by (path, size, mtime): unchanged files
keep their vectors, new and changed ones are embedded, deleted ones leave the index, and files that did
not decode stay listed as bad (not retried until they change). A different model (by the fingerprint of
its weights) or a different root re-embeds everything. Under torchrun the files to embed are split by
rank (rank r takes every WORLD_SIZE-th), each rank writes its shard, and rank 0 merges the shards and
writes the new generation: the scale-out path the trainers use, on gloo.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mmfm.checkpoint import weights_fingerprint as fingerprint
from mmfm.errors import DataError, IndexFileError, MMFMError
from mmfm.index.store import FileRecord, PhotoIndex, write_generation

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def scan(root: Path, skip: Path | None = None) -> list[FileRecord]:
    """Every image file under `root` (recursive, hidden entries and the index folder itself skipped),
    sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give the folder of photos to index")
    skip = skip.resolve() if skip is not None else None
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames
                             if not n.startswith(".") and (skip is None or (d / n).resolve() != skip))
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            p = d / name
            try:
                st = p.stat()
            except OSError:
                continue
            out.append(FileRecord(p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return sorted(out, key=lambda r: r.path)


@dataclass
class IndexReport:
    total: int
    embedded: int
    kept: int
    removed: int
    bad: int
    kind: str
    recall_at_10: float
    seconds: float
    generation: str
    reason: str = ""

    def summary(self) -> str:
        s = (f"{self.total} images indexed: {self.embedded} embedded, {self.kept} kept, {self.removed} removed"
             f"{f', {self.bad} unreadable (skipped)' if self.bad else ''}; FAISS {self.kind}")
        if self.kind != "flat":
            s += f" (recall@10 vs exact {self.recall_at_10:.3f})"
        return s + f"; {self.seconds:.1f} s{f' ({self.reason})' if self.reason else ''}"

    def to_dict(self) -> dict:
        return asdict(self)


def _load(root: Path, rec: FileRecord, model):
    from mmfm.vision.io import load_image

    try:
        img = load_image(root / rec.path)
    except MMFMError as e:
        return rec, None, str(e).split(": ", 1)[-1][:200]
    except OSError as e:  # vanished or unreadable between the scan and now
        return rec, None, f"cannot read ({e.strerror or e})"
    return FileRecord(rec.path, rec.size, rec.mtime_ns, img.width, img.height), model.preprocess(img), None


@torch.no_grad()
def embed_files(model, root: Path, recs: list[FileRecord], batch_size: int = 64, progress: bool = True):
    """(vectors (n, D) float32, the records that decoded (with their sizes), [(record, reason)] that did
    not). Images are decoded on two threads while the model embeds the previous batch."""
    from tqdm import tqdm

    from mmfm.eval.zeroshot import encode_images

    ok, bad, feats = [], [], []
    bar = tqdm(total=len(recs), unit="img", desc="embed", disable=not progress or not recs, dynamic_ncols=True)
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(recs), batch_size):
            xs = []
            for rec, x, why in pool.map(lambda r: _load(root, r, model), recs[start : start + batch_size]):
                if x is None:
                    bad.append((rec, why))
                else:
                    ok.append(rec)
                    xs.append(x)
            if xs:
                feats.append(encode_images(model, torch.stack(xs)).numpy())
            bar.update(min(batch_size, len(recs) - start))
    bar.close()
    dim = model.config.embed_dim
    return (np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)), ok, bad


def _dist():
    """(rank, world), initialising gloo under torchrun."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def update_index(root, out, model, model_name: str, batch_size: int = 64, kind: str = "auto",
                 max_memory_gb: float = 4.0, progress: bool = True) -> IndexReport | None:
    """Bring the index at `out` up to date with the images under `root`. Returns the report on rank 0
    (None on the other ranks)."""
    from mmfm.index.vectors import build

    t0 = time.perf_counter()
    root, out = Path(root).resolve(), Path(out)
    if out.exists() and not out.is_dir():
        raise IndexFileError(f"{out} exists and is not an index folder")
    rank, world = _dist()
    files = scan(root, skip=out)
    fp = fingerprint(model)
    previous, reason = None, ""
    if (out / "manifest.json").exists():
        try:
            previous = PhotoIndex(out)
        except IndexFileError as e:
            reason = f"the previous index was unreadable ({e}): rebuilt"
    if previous is not None and previous.info.get("fingerprint") != fp:
        previous, reason = None, "another model than the index's: every image re-embedded"
    elif previous is not None and Path(previous.info["root"]) != root:
        previous, reason = None, f"another folder than the index's ({previous.info['root']}): every image re-embedded"
    old = previous.records() if previous is not None else {}
    old_bad = previous.bad_records() if previous is not None else {}
    same = lambda a, b: a is not None and (a.size, a.mtime_ns) == (b.size, b.mtime_ns)  # noqa: E731
    keep = [old[f.path] for f in files if same(old.get(f.path), f)]
    still_bad = [old_bad[f.path] for f in files if f.path in old_bad and same(old_bad[f.path][0], f)]
    done = {f.path for f in keep} | {f.path for f, _ in still_bad}
    todo = [f for f in files if f.path not in done]
    present = {f.path for f in files}
    removed = sum(p not in present for p in old)
    vecs, ok, bad = embed_files(model, root, todo[rank::world], batch_size, progress and rank == 0)
    if world > 1:
        shards = out / ".shards"
        if rank == 0:
            shutil.rmtree(shards, ignore_errors=True)
            shards.mkdir(parents=True)
        _barrier(world)
        np.save(shards / f"rank-{rank}.npy", vecs)
        (shards / f"rank-{rank}.json").write_text(json.dumps({"ok": [asdict(r) for r in ok],
                                                               "bad": [[asdict(r), w] for r, w in bad]}))
        _barrier(world)
        if rank != 0:
            _barrier(world)
            return None
        parts, ok, bad = [], [], []
        for r in range(world):
            parts.append(np.load(shards / f"rank-{r}.npy"))
            got = json.loads((shards / f"rank-{r}.json").read_text())
            ok += [FileRecord(**d) for d in got["ok"]]
            bad += [(FileRecord(**d), w) for d, w in got["bad"]]
        vecs = np.concatenate(parts) if parts else vecs
        shutil.rmtree(shards, ignore_errors=True)
    kept_vecs = np.zeros((0, vecs.shape[1]), np.float32)
    if previous is not None and keep:
        row = {p: i for i, p in enumerate(previous.paths)}
        kept_vecs = np.asarray(previous.vectors)[[row[f.path] for f in keep]]
    records = keep + ok
    allv = np.concatenate([kept_vecs, vecs]).astype(np.float32)
    order = sorted(range(len(records)), key=lambda i: records[i].path)
    records, allv = [records[i] for i in order], allv[order] if len(order) else allv
    index, finfo = build(allv, kind=kind, max_memory_gb=max_memory_gb)
    info = {"root": str(root), "model": model_name, "fingerprint": fp, "dim": int(allv.shape[1]),
            "files": len(records), "bad": len(bad) + len(still_bad), "faiss": finfo,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if previous is not None:
        previous.close()
    gen = write_generation(out, info, records, allv, index, still_bad + bad)
    report = IndexReport(len(records), len(ok), len(keep), removed, len(bad) + len(still_bad), finfo["kind"],
                         finfo.get("recall_at_10", 1.0), time.perf_counter() - t0, gen, reason)
    _barrier(world)
    return report


__all__ = ["update_index", "scan", "fingerprint", "embed_files", "IndexReport", "IMAGE_SUFFIXES"]
