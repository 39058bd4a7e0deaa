"""Image-text pairs for CLIP, CoCa and NegCLIP: open_clip's CSV / TSV (`filepath` and `title` columns,
names configurable as with open_clip's --csv-img-key / --csv-caption-key) and webdataset shards (an
image as jpg / png / webp and its caption as txt, or json with a "caption" / "text" key).

CSV records are indexed: a step reads a seeded slice (`files.positions`), images are decoded when read,
so the data need not fit in memory and a resumed run reads the same pairs. Shards are streamed with
webdataset, each rank reading its own shards (`split_by_node`), shards in a seeded order per epoch.

NegCLIP's hard negatives for a user's captions come from the rule-based perturbations of
mmfm.text.perturb (attribute / relation swaps, word shuffles), as the NegCLIP paper makes them."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmfm.data.files import DataReport, ImageCache, image_root, positions, resolve_image, take
from mmfm.errors import DataError, InvalidImage
from mmfm.text.perturb import perturb
from mmfm.vision.io import load_image

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CSV_LIMIT = 1 << 24  # bytes in one CSV field


def read_table(path: Path, columns: tuple[str, ...], sep: str | None = None) -> list[dict]:
    """Rows of a CSV / TSV with a header: the separator from `sep`, the suffix (.tsv: tab) or the header
    line; DataError naming a missing column and the ones there are."""
    csv.field_size_limit(CSV_LIMIT)
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        head = f.readline()
        f.seek(0)
        sep = sep or ("\t" if Path(path).suffix.lower() == ".tsv" or "\t" in head else ",")
        reader = csv.DictReader(f, delimiter=sep)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(reader.fieldnames or [])}); "
                            "name the columns with --image-key / --caption-key")
        try:
            return list(reader)
        except csv.Error as e:
            raise DataError(f"{path}: broken CSV ({e})") from None


def clean_caption(text) -> str | None:
    if not isinstance(text, str):
        return None
    text = " ".join(text.split())
    return text or None


def hard_negative(caption: str, rng: np.random.Generator) -> str:
    """A caption that is false of the image it describes, by NegCLIP's rules: swap attributes or the
    relation, replace a word, shuffle nouns and adjectives or trigrams; the first that applies. A caption
    none applies to (one word) gets its words reversed or "no <caption>"."""
    for kind in rng.permutation(["swap_attributes", "swap_relation", "replace", "shuffle_nouns_adjectives",
                                 "shuffle_trigrams"]):
        neg = perturb(caption, str(kind), rng)
        if neg and neg != caption:
            return neg
    words = caption.split()
    return " ".join(reversed(words)) if len(words) > 1 and words != words[::-1] else f"no {caption}"


@dataclass
class CsvPairs:
    """open_clip's CSV: one (image path, caption) per row; unusable rows counted in `report`."""

    items: list[tuple[Path, str]]
    report: DataReport
    cache: ImageCache = field(init=False)

    def __post_init__(self):
        self.cache = ImageCache(self.report)

    @classmethod
    def read(cls, path, images=None, image_key: str = "filepath", caption_key: str = "title", sep: str | None = None,
             max_bad: float = 0.1) -> CsvPairs:
        path = Path(path)
        root = image_root(path, images)
        report = DataReport(str(path), max_bad)
        items = []
        for i, row in enumerate(read_table(path, (image_key, caption_key), sep), 2):
            report.seen()
            img = resolve_image(root, row[image_key])
            cap = clean_caption(row[caption_key])
            if img is None:
                report.skip("missing image file", f"line {i} ({row[image_key]!r})")
            elif cap is None:
                report.skip("empty caption", f"line {i}")
            else:
                items.append((img, cap))
        report.check()
        return cls(items, report)

    def __len__(self) -> int:
        return len(self.items)

    def get(self, i: int):
        path, cap = self.items[i]
        img = self.cache.load(path)
        return None if img is None else (img, cap)

    def batch_pairs(self, batch_size: int, step: int, seed: int, micro=0, rank=0, world=1, accum=1) -> list:
        idx = positions(len(self), batch_size, step, seed, micro, rank, world, accum)
        return take(idx, len(self), self.get)


def shard_urls(spec: str) -> list[str]:
    """Shard names from a brace pattern ("data/{000..009}.tar"), a folder of .tar files, or one file;
    several specs may be joined with '::' as open_clip does."""
    import braceexpand

    urls: list[str] = []
    for part in str(spec).split("::"):
        p = Path(part)
        if p.is_dir():
            urls += sorted(str(t) for t in p.glob("*.tar"))
        else:
            urls += list(braceexpand.braceexpand(part))
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if not urls or missing:
        raise DataError(f"webdataset {spec}: {'no shards' if not urls else f'no such shard {missing[0]}'}")
    return urls


def sample_pair(sample: dict) -> tuple:
    """A decoded webdataset sample -> (PIL image, caption); InvalidImage / DataError say why not."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise DataError("no image (jpg / png / webp) in the sample")
    img = load_image(sample[key])
    cap = None
    if "txt" in sample:
        cap = clean_caption(sample["txt"].decode("utf-8", errors="replace"))
    elif "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError:
            raise DataError("its json is not JSON") from None
        cap = clean_caption(meta.get("caption") or meta.get("text")) if isinstance(meta, dict) else None
    if cap is None:
        raise DataError("empty or missing caption (txt, or json with 'caption')")
    return img, cap


class ShardPairs:
    """webdataset shards streamed in order (seeded shard order per epoch); `batch_pairs` takes the next
    pairs of this rank. A resumed run skips the pairs of the steps already done."""

    def __init__(self, spec: str, max_bad: float = 0.1, seed: int = 0):
        self.urls = shard_urls(spec)
        self.report = DataReport(str(spec), max_bad)
        self.seed = seed
        self._it, self._epoch, self._pos = None, 0, 0

    def _samples(self):
        import webdataset as wds

        while True:
            order = np.random.default_rng([self.seed, self._epoch]).permutation(len(self.urls))
            ds = wds.WebDataset([self.urls[i] for i in order], shardshuffle=False, nodesplitter=wds.split_by_node,
                                empty_check=False)
            got = 0
            for sample in ds:
                first_epoch = self._epoch == 0  # later epochs read the same samples: counted once
                self.report.seen(first_epoch)
                try:
                    pair = sample_pair(sample)
                except (InvalidImage, DataError) as e:
                    if first_epoch:
                        self.report.skip(str(e).split(": ", 1)[-1][:80], sample.get("__key__", "?"))
                    if self.report.total >= 20:
                        self.report.check()
                    continue
                got += 1
                yield pair
            if not got:
                self.report.check()
                raise DataError(f"{self.report.source}: this rank read no usable sample "
                                "(fewer shards than ranks, or every sample broken)")
            self._epoch += 1

    def batch_pairs(self, batch_size: int, step: int, seed: int, micro=0, rank=0, world=1, accum=1) -> list:
        local = batch_size // (world * accum)
        want = (step * accum + micro) * local
        if self._it is None or want < self._pos:
            self._it, self._epoch, self._pos = self._samples(), 0, 0
        while self._pos < want:  # resume: skip what earlier steps read
            next(self._it)
            self._pos += 1
        out = [next(self._it) for _ in range(local)]
        self._pos += local
        return out

    def __len__(self) -> int:
        raise DataError("webdataset shards have no known length; give --steps rather than --epochs")


def read_pairs(path, fmt: str, images=None, image_key: str = "filepath", caption_key: str = "title",
               max_bad: float = 0.1, seed: int = 0):
    if fmt == "webdataset":
        return ShardPairs(str(path), max_bad, seed)
    if fmt == "csv":
        return CsvPairs.read(path, images, image_key, caption_key, max_bad=max_bad)
    raise DataError(f"{path}: image-text pairs are read from csv / tsv or webdataset shards, not {fmt}")


@dataclass
class PairBatches:
    """batch(step, ...) -> {"pixels", "input_ids"} (+ "negative_ids", NegCLIP's hard negatives) of a
    CsvPairs or ShardPairs source, for CLIPTrainModule / CoCaTrainModule."""

    source: object
    tokenizer: object
    preprocess: object
    batch_size: int
    seed: int = 0
    hard_negatives: bool = False

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1, accum: int = 1) -> dict:
        import torch

        got = self.source.batch_pairs(self.batch_size, step, self.seed, micro, rank, world, accum)
        caps = [c for _, c in got]
        out = {"pixels": torch.stack([self.preprocess(img) for img, _ in got]), "input_ids": self.tokenizer(caps)}
        if self.hard_negatives:
            rng = np.random.default_rng([self.seed, step, micro, rank, 5])
            out["negative_ids"] = self.tokenizer([hard_negative(c, rng) for c in caps])
        return out


def write_csv_pairs(path, rows: list[tuple[str, str]], sep: str = "\t") -> Path:
    """open_clip's CSV (filepath, title), e.g. to export world scenes for a fine-tuning demo."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=sep)
    w.writerow(["filepath", "title"])
    w.writerows(rows)
    Path(path).write_text(buf.getvalue())
    return Path(path)


__all__ = ["CsvPairs", "ShardPairs", "PairBatches", "read_pairs", "read_table", "hard_negative", "shard_urls",
           "sample_pair", "write_csv_pairs", "clean_caption"]
