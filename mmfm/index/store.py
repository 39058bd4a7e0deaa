"""A photo index on disk, opened read-only by any number of processes while a writer updates it.

    photos.mmfm/
      manifest.json        {"format": "mmfm-photo-index", "version": 1, "generation": "gen-000003"}
      gen-000003/          one immutable generation, written whole by `mmfm index`
        info.json          root folder, model and its fingerprint, dim, counts, the FAISS choice and recall
        files.sqlite       files(id, path, size, mtime_ns, width, height): id = row of vectors.npy;
                           bad(path, size, mtime_ns, reason): files that did not decode (not retried until
                           they change)
        vectors.npy        (N, D) float32, L2-normalised CLIP image embeddings
        faiss.index        the search index over them (mmfm.index.vectors)

A generation is never modified once written; an update writes the next one and then replaces
manifest.json atomically (os.replace), so a reader sees the old or the new index, never half of one.
SQLite is opened `mode=ro&immutable=1` (no locks: the file cannot change under it). The generation
before the current one is kept, so a reader that opened it a moment ago still finds its files.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mmfm.errors import IndexFileError
from mmfm.index.vectors import search as search_vectors

FORMAT, VERSION = "mmfm-photo-index", 1
SCHEMA = """
CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, size INTEGER NOT NULL,
                    mtime_ns INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL);
CREATE TABLE bad (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, reason TEXT NOT NULL);
"""


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative to the indexed root, '/'-separated
    size: int
    mtime_ns: int
    width: int = 0
    height: int = 0


class Hit(NamedTuple):
    """One search result: the file's row id, the inner-product score, and its path, looked up when asked
    for (`path`, `rel`). A tuple built in C, with no per-hit lookup, because a query that takes 100 us in
    FAISS should not take 20 more in Python (bench/search_speed.py measures the difference)."""

    id: int
    score: float
    owner: PhotoIndex

    @property
    def rel(self) -> str:
        """The path relative to the indexed folder, '/'-separated."""
        return self.owner.paths[self.id]

    @property
    def path(self) -> Path:
        return self.owner.root / self.owner.paths[self.id]

    def __repr__(self) -> str:
        return f"Hit(id={self.id}, path={self.rel!r}, score={self.score:.4f})"


class PhotoIndex:
    """A read-only view of the current generation of an index folder."""

    def __init__(self, folder):
        import faiss

        from mmfm.index.vectors import apply_info

        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        self.generation = manifest["generation"]
        gen = self.folder / self.generation
        try:
            self.info = json.loads((gen / "info.json").read_text())
            self.vectors = np.load(gen / "vectors.npy", mmap_mode="r", allow_pickle=False)
            self.db = sqlite3.connect(f"file:{(gen / 'files.sqlite').resolve()}?mode=ro&immutable=1", uri=True,
                                      check_same_thread=False)
            self.paths = [p for (p,) in self.db.execute("SELECT path FROM files ORDER BY id")]
            self.faiss = faiss.read_index(str(gen / "faiss.index"))
        except (OSError, ValueError, sqlite3.Error, RuntimeError) as e:
            raise IndexFileError(f"{self.folder}: generation {self.generation} is unreadable ({e}); "
                                 f"run `mmfm index` again to rebuild it") from None
        if not (len(self.paths) == len(self.vectors) == self.faiss.ntotal):
            raise IndexFileError(f"{self.folder}: {len(self.paths)} files, {len(self.vectors)} vectors and "
                                 f"{self.faiss.ntotal} indexed: the index is corrupt; run `mmfm index` again")
        apply_info(self.faiss, self.info["faiss"])
        self.root = Path(self.info["root"])
        self.dim = int(self.info["dim"])

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> Path:
        if not 0 <= i < len(self.paths):
            raise IndexFileError(f"no file {i} in the index (it has {len(self.paths)})")
        return self.root / self.paths[i]

    def records(self) -> dict[str, FileRecord]:
        rows = self.db.execute("SELECT path, size, mtime_ns, width, height FROM files")
        return {r[0]: FileRecord(*r) for r in rows}

    def bad_records(self) -> dict[str, tuple[FileRecord, str]]:
        rows = self.db.execute("SELECT path, size, mtime_ns, reason FROM bad")
        return {r[0]: (FileRecord(r[0], r[1], r[2]), r[3]) for r in rows}

    def search(self, queries: np.ndarray, k: int = 20) -> list[list[Hit]]:
        """queries (Q, D) or (D,), L2-normalised -> per query the k best files, best first."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise IndexFileError(f"a query of dimension {q.shape[1]} cannot search {self.folder} (dimension "
                                 f"{self.dim}): use the model the index was built with ({self.info['model']})")
        if not len(self):
            return [[] for _ in q]
        scores, ids = search_vectors(self.faiss, self.info["faiss"], self.vectors, q, min(k, len(self)))
        out, make = [], Hit._make
        for ss, ii in zip(scores.tolist(), ids.tolist()):
            if ii and ii[-1] < 0:  # an approximate index may find fewer than k: -1 fills the end
                n = ii.index(-1)
                ss, ii = ss[:n], ii[:n]
            out.append(list(map(make, zip(ii, ss, repeat(self)))))
        return out

    def close(self) -> None:
        self.db.close()


def read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text())
    except FileNotFoundError:
        raise IndexFileError(f"{folder} is not a photo index (no manifest.json); make one with "
                             f"`mmfm index PHOTOS/ --out {folder}`") from None
    except (OSError, ValueError) as e:
        raise IndexFileError(f"{folder}/manifest.json is unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFileError(f"{folder} is not an mmfm photo index")
    if manifest.get("version") != VERSION:
        raise IndexFileError(f"{folder} is a version {manifest.get('version')} index; this mmfm reads version "
                             f"{VERSION}: run `mmfm index` again")
    return manifest


def write_generation(folder: Path, info: dict, files: list[FileRecord], vectors: np.ndarray, index,
                     bad: list[tuple[FileRecord, str]]) -> str:
    """Write the next generation beside the current one, switch the manifest to it, drop all but the
    previous one. Returns the new generation's name."""
    import faiss

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gens = sorted(p.name for p in folder.glob("gen-*") if p.is_dir() and not p.name.endswith(".tmp"))
    number = int(gens[-1].split("-")[1]) + 1 if gens else 1
    name = f"gen-{number:06d}"
    tmp = folder / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    db = sqlite3.connect(tmp / "files.sqlite")
    db.executescript(SCHEMA)
    db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                   [(i, f.path, f.size, f.mtime_ns, f.width, f.height) for i, f in enumerate(files)])
    db.executemany("INSERT INTO bad VALUES (?, ?, ?, ?)", [(f.path, f.size, f.mtime_ns, r) for f, r in bad])
    db.commit()
    db.close()
    np.save(tmp / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(index, str(tmp / "faiss.index"))
    (tmp / "info.json").write_text(json.dumps(info, indent=1))
    os.replace(tmp, folder / name)
    manifest_tmp = folder / "manifest.json.tmp"
    manifest_tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, "generation": name}))
    os.replace(manifest_tmp, folder / "manifest.json")
    for old in gens[:-1]:  # keep the previous generation for readers that opened it a moment ago
        shutil.rmtree(folder / old, ignore_errors=True)
    return name


__all__ = ["PhotoIndex", "FileRecord", "Hit", "write_generation", "read_manifest"]
