"""`SamPredictor` with segment-anything's API: encode an image once with `set_image`, then prompt it
as often as you like with points, boxes and previous masks.

    predictor = SamPredictor(model)
    predictor.set_image(image)                                    # HWC uint8 RGB array, PIL image or path
    masks, scores, low_res = predictor.predict(point_coords=[[x, y]], point_labels=[1])
    masks, scores, low_res = predictor.predict(box=[x0, y0, x1, y1], mask_input=low_res[scores.argmax()][None])

Coordinates are pixels (x, y) of the original image. Prompts are checked: InvalidPrompt says what
is wrong (outside the image, NaN, an inverted box, a label other than -1/0/1, no image set).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from mmfm.errors import InvalidImage, InvalidPrompt
from mmfm.vision.io import load_image
from mmfm.vision.transforms import sam_resize_shape


class ResizeLongestSide:
    """The reference transform: the longest side to `size`, coordinates scaled per axis."""

    def __init__(self, size: int):
        self.target_length = size

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        nh, nw = sam_resize_shape(h, w, self.target_length)
        return np.array(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))

    def apply_coords(self, coords, original_size):
        h, w = original_size
        nh, nw = sam_resize_shape(h, w, self.target_length)
        coords = np.array(coords, dtype=float) if not torch.is_tensor(coords) else coords.clone().float()
        coords[..., 0] = coords[..., 0] * (nw / w)
        coords[..., 1] = coords[..., 1] * (nh / h)
        return coords

    def apply_boxes(self, boxes, original_size):
        shape = boxes.shape
        return self.apply_coords(boxes.reshape(-1, 2, 2), original_size).reshape(shape)

    apply_coords_torch = apply_coords
    apply_boxes_torch = apply_boxes


class SamPredictor:
    def __init__(self, model):
        self.model = model.eval()
        self.transform = ResizeLongestSide(model.image_size)
        self.reset_image()

    # ------------------------------------------------------------------------------ image
    def reset_image(self) -> None:
        self.is_image_set = False
        self.features = None
        self.original_size = self.input_size = None

    @torch.inference_mode()
    def set_image(self, image, image_format: str = "RGB") -> None:
        """Encode `image` once: a HWC uint8 array, a PIL image or a path."""
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise InvalidImage(f"expected an HxWx3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}")
            if image_format not in ("RGB", "BGR"):
                raise InvalidImage(f"image_format must be RGB or BGR, got {image_format!r}")
            arr = image[..., ::-1].copy() if image_format == "BGR" else image
        else:
            arr = np.asarray(load_image(image))
        if min(arr.shape[:2]) < 1:
            raise InvalidImage("the image is empty")
        h, w = arr.shape[:2]
        if min(sam_resize_shape(h, w, self.transform.target_length)) < 1:
            raise InvalidImage(f"the image is {w} x {h}: at SAM's input size its short side would be under one "
                               f"pixel; an aspect ratio this extreme cannot be segmented (crop it first)")
        resized = self.transform.apply_image(np.ascontiguousarray(arr))
        x = torch.as_tensor(resized, device=self.model.device).permute(2, 0, 1)[None].float()
        self.set_torch_image(x, arr.shape[:2])

    @torch.inference_mode()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, int]) -> None:
        """(1, 3, h, w) pixels already resized by `transform` (0..255)."""
        self.reset_image()
        self.original_size = tuple(int(s) for s in original_image_size)
        self.input_size = tuple(transformed_image.shape[-2:])
        self.features = self.model.encode_image(self.model.preprocess(transformed_image))
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        self._need_image()
        return self.features

    # ------------------------------------------------------------------------------ cached embeddings
    def fingerprint(self) -> str:
        if getattr(self, "_fingerprint", None) is None:
            from mmfm.checkpoint import weights_fingerprint

            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    def save_image_embedding(self, path) -> None:
        """The set image's embedding as safetensors (features + the sizes `predict` needs + the model's
        fingerprint): `load_image_embedding` restores it, and every prompt after is a decode only."""
        from mmfm.checkpoint import save_safetensors

        self._need_image()
        save_safetensors({"features": self.features.float().contiguous()}, path, metadata={
            "original_size": json.dumps(self.original_size), "input_size": json.dumps(self.input_size),
            "model": self.fingerprint(), "format": "mmfm-sam-embedding"})

    def load_image_embedding(self, path) -> None:
        """Restore an embedding saved by `save_image_embedding` for this same model (a CheckpointError if
        another model made it: its features would decode to nonsense)."""
        from safetensors import safe_open

        from mmfm.errors import CheckpointError

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                features = f.get_tensor("features")
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same mistake for the caller
            raise CheckpointError(f"{path}: not a readable SAM image embedding ({e})") from None
        if meta.get("format") != "mmfm-sam-embedding":
            raise CheckpointError(f"{path}: not a SAM image embedding saved by mmfm")
        if meta.get("model") != self.fingerprint():
            raise CheckpointError(f"{path} was embedded by another SAM; embed the image again with this one")
        self.reset_image()
        self.features = features.to(self.model.device, next(self.model.parameters()).dtype)
        self.original_size = tuple(json.loads(meta["original_size"]))
        self.input_size = tuple(json.loads(meta["input_size"]))
        self.is_image_set = True

    def _need_image(self) -> None:
        if not self.is_image_set:
            raise InvalidPrompt("no image is set: call predictor.set_image(image) before prompting")

    # ------------------------------------------------------------------------------ prompts
    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True, return_logits: bool = False):
        """One prompt, numpy in and out: masks (C, H, W) bool (logits with return_logits), scores (C,),
        low-res logits (C, 4h, 4w) to feed back as mask_input."""
        self._need_image()
        coords, labels, box_t, mask_t = self._check(point_coords, point_labels, box, mask_input)
        masks, iou, low = self.predict_torch(coords, labels, box_t, mask_t, multimask_output, return_logits)
        return masks[0].cpu().numpy(), iou[0].float().cpu().numpy(), low[0].float().cpu().numpy()

    @torch.inference_mode()
    def predict_torch(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                      multimask_output: bool = True, return_logits: bool = False):
        """Batched prompts on the set image, already in the model's input frame (apply_coords_torch /
        apply_boxes_torch): coords (B, N, 2), labels (B, N), boxes (B, 4), mask_input (B, 1, 4h, 4w)."""
        self._need_image()
        points = (point_coords, point_labels) if point_coords is not None else None
        low, iou = self.model.decode(self.features, points=points, boxes=boxes, mask_input=mask_input,
                                     multimask_output=multimask_output)
        masks = self.model.postprocess_masks(low, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low

    def _check(self, point_coords, point_labels, box, mask_input):
        h, w = self.original_size
        dev = self.model.device
        coords = labels = box_t = mask_t = None
        if point_coords is not None:
            if point_labels is None:
                raise InvalidPrompt("point_labels are required with point_coords (1 foreground, 0 background)")
            pc = _array(point_coords, "point_coords")
            pl = _array(point_labels, "point_labels")
            if pc.ndim != 2 or pc.shape[1] != 2 or len(pc) == 0:
                raise InvalidPrompt(f"point_coords must be an (N, 2) array of (x, y) pixels, got shape {pc.shape}")
            if pl.shape != (len(pc),):
                raise InvalidPrompt(f"point_labels must have one label per point: {pl.shape} for {len(pc)} points")
            if not np.isfinite(pc).all():
                raise InvalidPrompt("point_coords contain NaN or infinity")
            bad = [(float(x), float(y)) for x, y in pc if not (0 <= x <= w and 0 <= y <= h)]
            if bad:
                raise InvalidPrompt(f"points {bad[:3]} are outside the {w}x{h} image (x in [0, {w}], y in [0, {h}])")
            if not np.isin(pl, (-1, 0, 1)).all() or not np.all(pl == np.round(pl)):
                raise InvalidPrompt(
                    "point labels must be 1 (foreground), 0 (background) or -1 (ignore), "
                     f"got {sorted(set(pl.tolist()))}"
                )
            coords = torch.as_tensor(
                self.transform.apply_coords(pc, self.original_size), dtype=torch.float, device=dev
            )[None]
            labels = torch.as_tensor(pl, dtype=torch.int, device=dev)[None]
        elif point_labels is not None:
            raise InvalidPrompt("point_labels given without point_coords")
        if box is not None:
            b = _array(box, "box").reshape(-1)
            if b.shape != (4,):
                raise InvalidPrompt(f"box must be 4 numbers x0, y0, x1, y1, got {b.shape[0]}")
            if not np.isfinite(b).all():
                raise InvalidPrompt("box contains NaN or infinity")
            if b[2] < b[0] or b[3] < b[1]:
                raise InvalidPrompt(
                    f"box {b.tolist()} is inverted: it must be x0, y0, x1, y1 with x1 >= x0 and y1 >= y0"
                )
            if b[0] < 0 or b[1] < 0 or b[2] > w or b[3] > h:
                raise InvalidPrompt(f"box {b.tolist()} is outside the {w}x{h} image")
            box_t = torch.as_tensor(
                self.transform.apply_boxes(b[None], self.original_size), dtype=torch.float, device=dev
            )
        if mask_input is not None:
            m = _array(mask_input, "mask_input")
            side = 4 * self.model.config.embedding_size
            if m.shape not in ((1, side, side), (side, side)):
                raise InvalidPrompt(
                    "mask_input must be the low-res logits of a previous prediction, "
                     f"shape (1, {side}, {side}); got {m.shape}"
                )
            if not np.isfinite(m).all():
                raise InvalidPrompt("mask_input contains NaN or infinity")
            mask_t = torch.as_tensor(m.reshape(1, 1, side, side), dtype=torch.float, device=dev)
        return coords, labels, box_t, mask_t


def _array(x, name: str) -> np.ndarray:
    try:
        a = np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidPrompt(f"{name} must be numeric ({e})") from None
    return a
