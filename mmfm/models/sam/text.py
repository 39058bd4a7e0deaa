"""Text prompts for SAM (described in the paper, never released): candidate regions from the
automatic mask generator are cut out, scored against the text by a CLIP model, and SAM is prompted
with the box of the best one. Works with any CLIP mmfm loads, world checkpoints included.

    result = segment(sam, image, "the red circle", clip=mmfm.load("runs/clip/model"))
    result["mask"], result["box"], result["score"]
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mmfm.errors import InvalidPrompt
from mmfm.models.sam.amg import SamAutomaticMaskGenerator
from mmfm.vision.io import load_image


def _crop(image: np.ndarray, mask: np.ndarray, box, pad: float = 0.15) -> Image.Image:
    """The region on its own: pixels outside the mask become the image's median colour, then a square
    crop around the box with some margin (CLIP sees one object, as in its zero-shot images)."""
    h, w = mask.shape
    bg = np.median(image.reshape(-1, 3), 0).astype(np.uint8)
    img = np.where(mask[..., None], image, bg)
    x0, y0, bw, bh = box
    side = max(bw, bh) * (1 + 2 * pad) + 2
    cx, cy = x0 + bw / 2, y0 + bh / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    size = int(round(side))
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = bg
    sx0, sy0 = max(0, left), max(0, top)
    sx1, sy1 = min(w, left + size), min(h, top + size)
    canvas[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = img[sy0:sy1, sx0:sx1]
    return Image.fromarray(canvas)


@torch.inference_mode()
def segment(sam, image, text: str, clip, templates=("a photo of a {}.", "a {}.", "{}"), amg: dict | None = None,
            top_k: int = 5) -> dict:
    """The mask of the region that best matches `text`: {"mask", "box" XYXY, "score", "candidates"}."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidPrompt("the text prompt is empty; describe the object, e.g. 'the red circle'")
    if len(text) > 300:
        raise InvalidPrompt(f"the text prompt has {len(text)} characters; keep it under 300")
    arr = image if isinstance(image, np.ndarray) else np.asarray(load_image(image))
    settings = {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.85, **(amg or {})}
    gen = SamAutomaticMaskGenerator(sam, **settings)
    records = gen.generate(arr)
    if not records:
        raise InvalidPrompt("no candidate region found in the image (the automatic mask generator kept none)")
    crops = [_crop(arr, r["segmentation"], r["bbox"]) for r in records]
    x = torch.stack([clip.preprocess(c) for c in crops])
    img = clip.encode_image(x, normalize=True)
    tok = clip.tokenizer
    prompts = [t.format(text.strip()) for t in templates]
    txt = torch.nn.functional.normalize(clip.encode_text(tok(prompts), normalize=True).mean(0), dim=-1)
    scores = (img @ txt).tolist()
    order = np.argsort(scores)[::-1]
    best = records[int(order[0])]
    x0, y0, bw, bh = best["bbox"]
    box = np.array([x0, y0, x0 + bw, y0 + bh], dtype=float)
    predictor = gen.predictor  # still holds this image's embedding: no second encoding
    if not predictor.is_image_set:
        predictor.set_image(arr)
    masks, iou, _ = predictor.predict(box=box, multimask_output=False)
    return {
        "mask": masks[0],
        "box": box.tolist(),
        "score": float(scores[int(order[0])]),
        "predicted_iou": float(iou[0]),
        "candidates": [{"bbox": records[i]["bbox"], "score": round(float(scores[i]), 4)} for i in order[:top_k]],
    }
