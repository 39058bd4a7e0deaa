"""World samples as JSON records, contact sheets, and webdataset tar shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

from mmfm.vision.draw import grid, overlay
from mmfm.vision.masks import coco_rle
from mmfm.world.annotate import interior_points
from mmfm.world.world import Sample


def sample_record(s: Sample) -> dict:
    """Everything known about a sample, JSON-ready."""
    r = s.rendered

    objects = []
    pts = interior_points(r)
    for i, o in enumerate(r.scene.objects):
        objects.append(
            {
                "shape": o.shape, "color": o.color, "size": o.size,
                "center": [o.x * r.size, o.y * r.size], "radius": o.r * r.size, "rotation": o.rotation,
                "box": r.boxes[i].tolist(), "area": int(r.areas[i]),
                "point": None if r.areas[i] == 0 else pts[i].tolist(),
                "mask": coco_rle(r.masks[i]),
            }
        )
    a = s.ann
    return {
        "split": s.split, "index": s.index, "size": r.size, "background": r.scene.background.kind,
        "tags": list(r.scene.tags), "objects": objects,
        "captions": [{"text": c.text, "kind": c.kind} for c in a.captions],
        "regions": [{"text": t, "box": b} for t, b in a.regions],
        "relations": [{"subject": i, "relation": rel, "object": j} for i, rel, j in a.relations],
        "qa": [{"question": q.question, "answer": q.answer, "kind": q.kind} for q in a.qa],
        "negatives": [{"text": n.text, "positive": n.positive, "kind": n.kind} for n in a.negatives],
        "points": [{"query": p.query, "points": [list(x) for x in p.points], "answer": p.answer} for p in a.points],
    }


def sample_sheet(samples: list[Sample], scale: int = 2, cols: int = 4) -> Image.Image:
    tiles, caps = [], []
    for s in samples:
        r = s.rendered
        pts = [tuple(p) for p in interior_points(r) if p[0] == p[0]]
        tiles.append(overlay(r.image, scale=scale))  # the plain image, so colors can be judged
        tiles.append(overlay(r.image, r.masks, r.boxes, pts, scale=scale, alpha=0.5))
        caps += [s.ann.captions[0].text, f"{len(pts)} objects, {len(s.ann.qa)} QA"]
    return grid(tiles, cols=2 * cols, captions=caps)


def write_shards(records, out_dir, samples_per_shard: int = 1000, prefix: str = "shard") -> list[Path]:
    """Write (key, {ext: bytes|str|dict|PIL}) records as webdataset tar shards (`{prefix}-000000.tar`):
    every member of a sample shares the key, as webdataset expects. Returns the shard paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    tar = None
    for k, (key, fields) in enumerate(records):
        if k % samples_per_shard == 0:
            if tar is not None:
                tar.close()
            paths.append(out / f"{prefix}-{len(paths):06d}.tar")
            tar = tarfile.open(paths[-1], "w")
        for ext, value in fields.items():
            data = _encode(ext, value)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0  # same input, same bytes
            tar.addfile(info, io.BytesIO(data))
    if tar is not None:
        tar.close()
    return paths


def _encode(ext: str, value) -> bytes:
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    if isinstance(value, bytes):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value).encode()
    return str(value).encode()


def world_shards(world, split: str, n: int, out_dir, samples_per_shard: int = 1000) -> list[Path]:
    """Export `n` samples of a split (image + full ground truth JSON) as webdataset shards."""
    def gen():
        for i in range(n):
            s = world.sample(split, i)
            yield f"{split}_{i:08d}", {"png": s.image, "json": sample_record(s)}

    return write_shards(gen(), out_dir, samples_per_shard, prefix=split)


def read_shards(paths):
    """Iterate (key, {ext: bytes}) over webdataset tar shards, without the webdataset package."""
    for p in paths:
        with tarfile.open(p) as tar:
            cur, fields = None, {}
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                if cur is not None and key != cur:
                    yield cur, fields
                    fields = {}
                cur = key
                fields[ext] = tar.extractfile(m).read()
            if cur is not None:
                yield cur, fields


# ------------------------------------------------------------------------------ the ecosystem's formats
# World data written the way users' own data comes (open_clip CSV, image folders, COCO instances, LLaVA
# JSON): the test bed of `mmfm train ... --data` and the fine-tuning demonstrations (bench/RESULTS.md).

def _save(img: Image.Image, folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    img.save(folder / name)
    return f"{folder.name}/{name}"


def export_pairs_csv(items, out_dir, name: str = "pairs.tsv", sep: str = "\t") -> Path:
    """(PIL image, [captions]) items -> out_dir/images/*.png and an open_clip CSV (filepath, title), a
    row per caption."""
    import csv

    out = Path(out_dir)
    rows = []
    for i, (img, caps) in enumerate(items):
        rel = _save(img, out / "images", f"{i:06d}.png")
        rows += [(rel, c) for c in caps]
    with open(out / name, "w", newline="") as f:
        w = csv.writer(f, delimiter=sep)
        w.writerow(["filepath", "title"])
        w.writerows(rows)
    return out / name


def export_imagefolder(items, out_dir) -> Path:
    """(PIL image, class name) items -> out_dir/<class name with _>/<i>.png (torchvision's ImageFolder)."""
    out = Path(out_dir)
    for i, (img, label) in enumerate(items):
        _save(img, out / label.replace(" ", "_"), f"{i:06d}.png")
    return out


def polygons(mask) -> list[list[float]]:
    """A mask's outer contours as COCO polygons (OpenCV); [] if a contour has fewer than 3 points or the
    mask has a hole (an occluder inside it), which polygons cannot say: RLE then."""
    import cv2
    import numpy as np

    cs, hier = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hier is None or (hier[0][:, 3] >= 0).any() or any(len(c) < 3 for c in cs):
        return []
    return [c.reshape(-1).astype(float).tolist() for c in cs]


def export_coco(items, out_dir, name: str = "instances.json", polygon_every: int = 2) -> Path:
    """(PIL image, masks (K, H, W) bool) items -> images/ and a COCO instances JSON; every
    `polygon_every`-th object as polygons (OpenCV contours), the others as compressed RLE."""
    out = Path(out_dir)
    images, anns = [], []
    for i, (img, masks) in enumerate(items):
        rel = _save(img, out / "images", f"{i:06d}.png")
        images.append({"id": i + 1, "file_name": rel, "width": img.width, "height": img.height})
        for m in masks:
            if not m.any():
                continue
            seg = polygons(m) if polygon_every and len(anns) % polygon_every == 0 else []
            if not seg:
                seg = coco_rle(m)
            ys, xs = m.nonzero()
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "segmentation": seg,
                         "area": int(m.sum()), "iscrowd": 0,
                         "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                  int(ys.max() - ys.min() + 1)]})
    (out / name).write_text(json.dumps({"images": images, "annotations": anns,
                                        "categories": [{"id": 1, "name": "object"}]}))
    return out / name


def export_llava(items, out_dir, name: str = "llava.json") -> Path:
    """(PIL image, [(question, answer), ...]) items -> images/ and LLaVA's JSON (the image in the first
    human turn)."""
    out = Path(out_dir)
    records = []
    for i, (img, qas) in enumerate(items):
        rel = _save(img, out / "images", f"{i:06d}.png")
        conv = []
        for k, (q, a) in enumerate(qas):
            conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q}, {"from": "gpt", "value": a}]
        records.append({"id": f"{i:06d}", "image": rel, "conversations": conv})
    (out / name).write_text(json.dumps(records, indent=1))
    return out / name


def leftmost_qa(r) -> tuple[str, str] | None:
    """A question type the world's instruction data never asks: the leftmost visible object."""
    import numpy as np

    vis = np.flatnonzero(r.areas > 0)
    if len(vis) < 2:
        return None
    xs = r.centroids[vis, 0]
    order = np.argsort(xs)
    if xs[order[1]] - xs[order[0]] < 0.05 * r.size:  # too close to call
        return None
    o = r.scene.objects[vis[order[0]]]
    return "Which object is furthest to the left?", f"The {o.color} {o.shape}."


EXPORT_FORMATS = ("csv", "webdataset", "imagefolder", "coco", "llava")
EXPORT_KINDS = ("scenes", "concepts", "objects", "leftmost")


def _concept_caption(name: str) -> str:
    return f"a picture of {'an' if name[0] in 'aeiou' else 'a'} {name}"


def export_world(world, out_dir, fmt: str, kind: str = "scenes", split: str = "train", n: int = 100,
                 start: int = 0) -> Path:
    """World data in an ecosystem format, for trying `mmfm train ... --data` and for the fine-tuning
    demonstrations. kind: scenes (captions / objects / QA), concepts (snowman, traffic light, ...:
    names the world's training text never uses; one object each for coco), objects (one object, its
    "<color> <shape>" class: imagefolder) or leftmost (LLaVA: a question type the world's instruction
    data never asks). Returns the file (or folder) to pass as --data."""
    import numpy as np

    from mmfm.world.vocab import ALL_PAIRS, CONCEPT_NAMES

    if fmt not in EXPORT_FORMATS or kind not in EXPORT_KINDS:
        raise ValueError(f"format {fmt!r} / kind {kind!r}: use {EXPORT_FORMATS} / {EXPORT_KINDS}")
    out = Path(out_dir)
    idx = range(start, start + n)

    def concepts():
        for i in idx:
            r, k = world.concept(i)
            yield r, CONCEPT_NAMES[k]

    if fmt in ("csv", "webdataset"):
        if kind == "concepts":
            items = [(r.pil(), [_concept_caption(name)]) for r, name in concepts()]
        else:
            items = []
            for i in idx:
                r, caps = world.captioned(split, i)
                items.append((r.pil(), [c.text for c in caps]))
        if fmt == "csv":
            return export_pairs_csv(items, out)
        recs = ((f"{split}_{start + i:08d}", {"png": img, "txt": caps[0]}) for i, (img, caps) in enumerate(items))
        write_shards(recs, out, samples_per_shard=1000, prefix=split)
        return out
    if fmt == "imagefolder":
        if kind == "concepts":
            return export_imagefolder([(r.pil(), name) for r, name in concepts()], out)
        items = []
        for i in idx:
            r, k = world.classification(split, i)
            items.append((r.pil(), " ".join(ALL_PAIRS[k])))
        return export_imagefolder(items, out)
    if fmt == "coco":
        if kind == "concepts":  # the whole concept as one object: a shape the world's SAM never saw
            return export_coco([(r.pil(), r.masks.any(0, keepdims=True)) for r, _ in concepts()], out)
        items = []
        for i in idx:
            s = world.sample(split, i)
            items.append((s.rendered.pil(), s.rendered.masks[s.rendered.areas >= 12]))
        return export_coco(items, out)
    items = []
    i = start
    while len(items) < n:
        s = world.sample(split, i)
        i += 1
        if kind == "leftmost":
            qa = leftmost_qa(s.rendered)
            if qa is not None:
                items.append((s.rendered.pil(), [qa]))
        elif s.ann.qa:
            q = s.ann.qa[int(np.random.default_rng(i).integers(len(s.ann.qa)))]
            items.append((s.rendered.pil(), [(q.question, q.answer)]))
        if i - start > 20 * n + 100:
            break
    return export_llava(items, out)
