"""A user's dataset on disk, in the formats the ecosystem already writes: what kind of file it is, where
its images are, what was unusable in it, and which records a training step reads.

- `DataReport`: every unusable record is counted by reason and the first few are listed; past the
  tolerated fraction (`max_bad`, default 10%) or with nothing usable the dataset is refused with a
  `DataError`, so nothing trains silently on an empty or wrong batch. It is written next to a run as
  `data_report.json`.
- `detect_format`: csv / tsv, webdataset shards, an image-folder tree, LLaVA JSON, COCO instances,
  COCO captions, read from the file itself (`--format` overrides).
- `positions`: the records of a step, a pure function of (seed, step), so a resumed run reads the
  same records and ranks under torchrun read disjoint slices of each global batch.

The readers of each kind are in `pairs.py` (image-text), `labeled.py` (classes, captions per image),
`instructions.py` (LLaVA JSON) and `coco.py` (instances)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmfm.errors import DataError, InvalidImage
from mmfm.vision.io import load_image

FORMATS = ("csv", "webdataset", "imagefolder", "llava", "coco-instances", "coco-captions")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_LISTED = 20


@dataclass
class DataReport:
    """Counts of usable and unusable records of one dataset; `check()` refuses it past `max_bad`."""

    source: str
    max_bad: float = 0.1
    total: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)

    @property
    def bad(self) -> int:
        return sum(self.reasons.values())

    def seen(self, n: int = 1) -> None:
        self.total += n

    def skip(self, reason: str, where: str) -> None:
        self.reasons[reason] += 1
        if len(self.examples) < MAX_LISTED:
            self.examples.append(f"{where}: {reason}")

    def check(self) -> DataReport:
        """Raise DataError if nothing is usable or more than `max_bad` of the records are not."""
        first = f"; first: {self.examples[0]}" if self.examples else ""
        if self.total == 0:
            raise DataError(f"{self.source}: no records found; check the path and the format")
        if self.bad >= self.total:
            raise DataError(f"{self.source}: none of its {self.total} records is usable{first}")
        if self.bad > self.max_bad * self.total:
            raise DataError(f"{self.source}: {self.bad} of {self.total} records are unusable "
                            f"({self.bad / self.total:.0%}, over the {self.max_bad:.0%} tolerated; "
                            f"raise --max-bad to accept){first}")
        return self

    def summary(self) -> str:
        if not self.bad:
            return f"{self.source}: {self.total} records, all usable"
        why = ", ".join(f"{n} {r}" for r, n in self.reasons.most_common())
        return f"{self.source}: {self.total - self.bad} of {self.total} records usable, skipped {why}"

    def to_dict(self) -> dict:
        return {"source": self.source, "records": self.total, "skipped": self.bad,
                "reasons": dict(self.reasons), "first_skipped": self.examples, "max_bad": self.max_bad}


def is_webdataset(path: str) -> bool:
    s = str(path)
    return "{" in s or s.endswith(".tar") or (Path(s).is_dir() and any(Path(s).glob("*.tar")))


def detect_format(path, want: tuple[str, ...] = FORMATS, given: str | None = None) -> str:
    """The dataset's format, from `given` (--format) or from the file; DataError if it is not one of
    `want` (the formats the command reads)."""
    fmt = given or _sniff(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt not in want:
        raise DataError(f"{path} is {fmt} data; this command reads {' or '.join(want)}")
    return fmt


def _sniff(path) -> str:
    s = str(path)
    if is_webdataset(s):
        return "webdataset"
    p = Path(s)
    if p.is_dir():
        if any(d.is_dir() for d in p.iterdir()):
            return "imagefolder"
        raise DataError(f"{p}: a folder of data is either class sub-folders of images or webdataset .tar shards")
    if not p.is_file():
        raise DataError(f"{p}: no such file or folder")
    if p.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    if p.suffix.lower() in (".json", ".jsonl"):
        obj = read_json_data(p)
        if isinstance(obj, list):
            if obj and isinstance(obj[0], dict) and "conversations" in obj[0]:
                return "llava"
            raise DataError(f"{p}: a JSON list is read as LLaVA data, whose records have 'conversations'")
        if isinstance(obj, dict) and isinstance(obj.get("annotations"), list) and "images" in obj:
            ann = obj["annotations"][0] if obj["annotations"] else {}
            return "coco-captions" if "caption" in ann and "segmentation" not in ann else "coco-instances"
        raise DataError(f"{p}: JSON that is neither LLaVA conversations nor COCO annotations")
    raise DataError(f"{p}: unknown data file type {p.suffix!r}; use .csv/.tsv, .json, .tar shards or an image folder")


def read_json_data(path: Path):
    """A JSON file, or JSON Lines (one record per line) as a list; DataError naming the line if broken."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if Path(path).suffix.lower() == ".jsonl":
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not JSON ({e.msg})") from None
        return out
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None


def image_root(data: Path, images: Path | None) -> Path:
    """Where the relative image paths of a data file point: --images, else the file's folder."""
    root = Path(images) if images else Path(data).parent
    if images and not root.is_dir():
        raise DataError(f"--images {root}: no such folder")
    return root


def resolve_image(root: Path, name) -> Path | None:
    """The image file a record names, or None when it is missing (or not a string)."""
    if not isinstance(name, str) or not name.strip():
        return None
    p = Path(name)
    p = p if p.is_absolute() else root / p
    return p if p.is_file() else None


def positions(n: int, batch_size: int, step: int, seed: int, micro: int = 0, rank: int = 0, world: int = 1,
              accum: int = 1) -> np.ndarray:
    """Record indices of this rank's micro-batch of `step`: the records are read in a new seeded order
    each epoch (an epoch may end inside a batch), and each global batch is cut into world x accum
    slices."""
    local = batch_size // (world * accum)
    start = step * batch_size + (rank * accum + micro) * local
    pos = np.arange(start, start + local)
    out = np.empty(local, dtype=np.int64)
    for epoch in np.unique(pos // n):
        sel = pos // n == epoch
        out[sel] = np.random.default_rng([seed, int(epoch)]).permutation(n)[pos[sel] % n]
    return out


class ImageCache:
    """Load images by path with the safe loader; one that fails is counted in the report once and
    remembered, so a step replaces it by another record instead of training on nothing."""

    def __init__(self, report: DataReport):
        self.report = report
        self.failed: set[str] = set()

    def load(self, path):
        key = str(path)
        if key in self.failed:
            return None
        try:
            return load_image(path)
        except InvalidImage as e:
            self.failed.add(key)
            self.report.skip(f"unreadable image ({str(e).split(': ', 1)[-1][:60]})", key)
            self.report.check()
            return None


def take(indices, n: int, get):
    """`get(i)` for each index, a failed one (None) replaced by the next index in order: the same
    records every time for the same step."""
    out = []
    for i in indices:
        for k in range(n):
            item = get((int(i) + k) % n)
            if item is not None:
                out.append(item)
                break
        else:
            raise DataError("no record of the dataset could be read")
    return out


__all__ = ["DataReport", "FORMATS", "detect_format", "read_json_data", "image_root", "resolve_image", "positions",
           "ImageCache", "take", "is_webdataset", "IMAGE_SUFFIXES"]
