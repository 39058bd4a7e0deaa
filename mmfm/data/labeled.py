"""Labeled images for evaluation: classes (an image-folder tree, a class per folder as torchvision's
ImageFolder reads it, or a CSV of `filepath,label`), class names and templates in CLIP_benchmark's
conventions (names from a text file, a line each, or a JSON list; templates with `{c}`), and captions per
image for retrieval (a CSV with several rows per image, or a COCO captions JSON)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmfm.data.files import IMAGE_SUFFIXES, DataReport, image_root, read_json_data, resolve_image
from mmfm.data.pairs import clean_caption, read_table
from mmfm.errors import DataError


@dataclass
class Labeled:
    items: list[tuple[Path, int]]  # (image, class index)
    classnames: list[str]
    report: DataReport


def read_classes(path, fmt: str, images=None, image_key: str = "filepath", label_key: str = "label",
                 classnames: list[str] | None = None, max_bad: float = 0.1) -> Labeled:
    """An image folder (classes sorted by folder name, "_" read as a space) or a CSV whose labels are
    class names or indices into `classnames`."""
    path = Path(path)
    report = DataReport(str(path), max_bad)
    items: list[tuple[Path, int]] = []
    if fmt == "imagefolder":
        folders = sorted(d for d in path.iterdir() if d.is_dir())
        names = classnames or [d.name.replace("_", " ") for d in folders]
        if len(names) != len(folders):
            raise DataError(f"{path}: {len(folders)} class folders but {len(names)} class names")
        for k, d in enumerate(folders):
            for f in sorted(d.rglob("*")):
                if f.is_file():
                    report.seen()
                    if f.suffix.lower() in IMAGE_SUFFIXES:
                        items.append((f, k))
                    else:
                        report.skip("not an image file", str(f))
        return Labeled(items, list(names), report.check())
    if fmt != "csv":
        raise DataError(f"{path}: classes are read from an image folder or a csv, not {fmt}")
    root = image_root(path, images)
    rows = read_table(path, (image_key, label_key))
    labels = [r[label_key].strip() for r in rows]
    numeric = all(lab.isdigit() for lab in labels if lab)
    if numeric and not classnames:
        raise DataError(f"{path}: numeric labels need the class names (--classnames FILE)")
    names = list(classnames) if classnames else sorted({lab for lab in labels if lab})
    index = {n: i for i, n in enumerate(names)}
    for i, (row, lab) in enumerate(zip(rows, labels), 2):
        report.seen()
        img = resolve_image(root, row[image_key])
        k = int(lab) if numeric and lab else index.get(lab)
        if img is None:
            report.skip("missing image file", f"line {i} ({row[image_key]!r})")
        elif k is None or not 0 <= k < len(names):
            report.skip("unknown label", f"line {i} ({lab!r})")
        else:
            items.append((img, k))
    return Labeled(items, names, report.check())


def read_classnames(path) -> list[str]:
    """One class name per line (a .txt), or a JSON list."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        names = read_json_data(path)
    else:
        names = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        names = [n for n in names if n]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise DataError(f"{path}: class names are a non-empty list of strings")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: a class name is listed twice")
    return names


def read_templates(path) -> list[str]:
    """Prompt templates with `{c}` (CLIP_benchmark) or `{}` where the class name goes: a JSON list or a
    line each."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        tpl = read_json_data(path)
    else:
        tpl = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if not isinstance(tpl, list) or not tpl or not all(isinstance(t, str) for t in tpl):
        raise DataError(f"{path}: templates are a non-empty list of strings")
    out = [t.replace("{c}", "{}") for t in tpl]
    bad = [t for t in out if t.count("{}") != 1 or "{" in t.replace("{}", "")]
    if bad:
        raise DataError(f"{path}: template {bad[0]!r} must hold the class name once, as {{c}}")
    return out


@dataclass
class Captioned:
    items: list[tuple[Path, list[str]]]  # (image, its captions)
    report: DataReport


def read_captions(path, fmt: str, images=None, image_key: str = "filepath", caption_key: str = "title",
                  max_bad: float = 0.1) -> Captioned:
    """Captions per image: an open_clip CSV (rows of the same image grouped, in file order) or a COCO
    captions JSON (`images` with file_name, `annotations` with image_id and caption)."""
    path = Path(path)
    root = image_root(path, images)
    report = DataReport(str(path), max_bad)
    by_image: dict[Path, list[str]] = {}
    if fmt == "csv":
        for i, row in enumerate(read_table(path, (image_key, caption_key)), 2):
            report.seen()
            img, cap = resolve_image(root, row[image_key]), clean_caption(row[caption_key])
            if img is None:
                report.skip("missing image file", f"line {i} ({row[image_key]!r})")
            elif cap is None:
                report.skip("empty caption", f"line {i}")
            else:
                by_image.setdefault(img, []).append(cap)
    elif fmt == "coco-captions":
        obj = read_json_data(path)
        files = {im.get("id"): im.get("file_name") for im in obj.get("images", []) if isinstance(im, dict)}
        for ann in obj["annotations"]:
            report.seen()
            if not isinstance(ann, dict) or ann.get("image_id") not in files:
                report.skip("caption of an unknown image id", str(ann.get("id", "?") if isinstance(ann, dict) else "?"))
                continue
            img, cap = resolve_image(root, files[ann["image_id"]]), clean_caption(ann.get("caption"))
            if img is None:
                report.skip("missing image file", repr(files[ann["image_id"]]))
            elif cap is None:
                report.skip("empty caption", str(ann.get("id", "?")))
            else:
                by_image.setdefault(img, []).append(cap)
    else:
        raise DataError(f"{path}: captions are read from a csv or a COCO captions JSON, not {fmt}")
    return Captioned(list(by_image.items()), report.check())


__all__ = ["Labeled", "Captioned", "read_classes", "read_classnames", "read_templates", "read_captions"]
