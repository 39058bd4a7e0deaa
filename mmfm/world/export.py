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
