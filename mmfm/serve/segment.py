"""Click-to-segment sessions: SAM's own design, the heavy image encoder once per image and the light
prompt decoder per click. Embeddings of uploaded images are kept by content hash (LRU in memory, and
on disk under `cache_dir` when given, as safetensors that `SamPredictor.load_image_embedding` reads), so
the same picture sent twice, or after a restart, is not encoded again."""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from mmfm.errors import CheckpointError
from mmfm.models.sam.predictor import SamPredictor
from mmfm.vision.masks import coco_rle

MASK_RGBA = (30, 144, 255, 150)


class UnknownImage(LookupError):
    pass


class SamSessions:
    def __init__(self, sam, capacity: int = 16, cache_dir: Path | None = None):
        self.predictor = SamPredictor(sam)
        self.capacity = capacity
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.states: OrderedDict[str, tuple] = OrderedDict()

    @staticmethod
    def image_id(arr: np.ndarray) -> str:
        return hashlib.sha256(str(arr.shape).encode() + arr.tobytes()).hexdigest()[:24]

    def embed(self, pic) -> dict:
        """Encode `pic` (PIL RGB) unless its embedding is kept; its id, size and whether it was cached."""
        arr = np.ascontiguousarray(np.asarray(pic.convert("RGB")))
        key = self.image_id(arr)
        cached = key in self.states
        if cached:
            self.states.move_to_end(key)
        else:
            disk = self.cache_dir / f"{key}.safetensors" if self.cache_dir else None
            p = self.predictor
            if disk is not None and disk.is_file():
                try:
                    p.load_image_embedding(disk)
                    cached = True
                except CheckpointError:  # another model's, or damaged: embed again, overwrite it
                    p.set_image(arr)
                    p.save_image_embedding(disk)
            else:
                p.set_image(arr)
                if disk is not None:
                    p.save_image_embedding(disk)
            self.states[key] = (p.features, p.original_size, p.input_size)
            while len(self.states) > self.capacity:
                self.states.popitem(last=False)
        h, w = arr.shape[:2]
        return {"image_id": key, "width": w, "height": h, "cached": cached}

    def predict(self, key: str, points=(), box=None, multimask: bool = True) -> list[dict]:
        """Masks for one prompt on a kept image, best first: score, area, bbox (x0, y0, x1, y1), COCO RLE,
        and an RGBA PNG overlay (the mask in colour, the rest transparent) as bytes."""
        if key not in self.states:
            raise UnknownImage(key)
        p = self.predictor
        p.features, p.original_size, p.input_size = self.states[key]
        p.is_image_set = True
        self.states.move_to_end(key)
        coords = np.array([[x, y] for x, y, _ in points], dtype=np.float64) if points else None
        labels = np.array([lab for _, _, lab in points]) if points else None
        masks, scores, _ = p.predict(point_coords=coords, point_labels=labels,
                                     box=np.array(box, dtype=np.float64) if box is not None else None,
                                     multimask_output=multimask)
        out = []
        for i in np.argsort(-scores):
            m = masks[i]
            ys, xs = np.nonzero(m)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else [0, 0, 0, 0]
            rgba = np.zeros((*m.shape, 4), np.uint8)
            rgba[m] = MASK_RGBA
            buf = io.BytesIO()
            Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
            out.append({"score": float(scores[i]), "area": int(m.sum()), "bbox": bbox, "rle": coco_rle(m),
                        "png": buf.getvalue()})
        return out


__all__ = ["SamSessions", "UnknownImage"]
