"""Preprocessing that matches the reference implementations' numbers, on PIL and torch only.

CLIP (OpenAI / open_clip): bicubic resize of the shortest side, center crop (torchvision's rounding),
[0, 1] scaling, mean/std normalisation. SAM: resize the longest side (bilinear, round half up),
normalise on the 0-255 scale, pad bottom-right with zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mmfm.errors import InvalidImage
from mmfm.vision.io import load_image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def greyscale(images: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> the same shape, each pixel the mean of its channels in all three (a grey picture the
    model takes as it takes any other)."""
    if images.dtype != np.uint8 or images.shape[-1:] != (3,):
        raise InvalidImage(f"greyscale takes uint8 images with 3 channels last, got {images.dtype} {images.shape}")
    return np.repeat(images.mean(-1, dtype=np.float32, keepdims=True), 3, -1).round().astype(np.uint8)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL -> (3, H, W) float32 in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def resize_shortest(img: Image.Image, size: int, resample=Image.BICUBIC) -> Image.Image:
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), resample)


def center_crop(img: Image.Image, size: int, rounding: str = "round") -> Image.Image:
    """Center crop, padding with zeros when the image is smaller. The references disagree by one pixel
    when the margin is odd: torchvision (OpenAI CLIP, open_clip) rounds the offset (`rounding="round"`),
    transformers' CLIPImageProcessor floors it (`rounding="floor"`)."""
    w, h = img.size
    if w < size or h < size:
        canvas = Image.new(img.mode, (max(w, size), max(h, size)))
        canvas.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        img, (w, h) = canvas, canvas.size
    if rounding == "floor":
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


@dataclass
class CLIPPreprocess:
    """image (any `load_image` input) -> (3, size, size) float32, normalised."""

    size: int = 224
    mean: tuple = OPENAI_CLIP_MEAN
    std: tuple = OPENAI_CLIP_STD
    resample: int = Image.BICUBIC
    crop_rounding: str = "round"  # "floor" reproduces transformers' CLIPImageProcessor

    def __call__(self, image) -> torch.Tensor:
        img = resize_shortest(load_image(image), self.size, self.resample)
        img = center_crop(img, self.size, self.crop_rounding)
        x = to_tensor(img)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def batch(self, images) -> torch.Tensor:
        return torch.stack([self(im) for im in images])


def sam_resize_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """segment-anything's ResizeLongestSide.get_preprocess_shape: (new_h, new_w)."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass
class SAMPreprocess:
    """image -> ((3, size, size) float32 normalised and padded, (h, w) original, (h', w') resized)."""

    size: int = 1024
    mean: tuple = SAM_PIXEL_MEAN
    std: tuple = SAM_PIXEL_STD

    def __call__(self, image):
        img = load_image(image)
        h, w = img.height, img.width
        nh, nw = sam_resize_shape(h, w, self.size)
        x = torch.from_numpy(np.asarray(img.resize((nw, nh), Image.BILINEAR), dtype=np.uint8).copy())
        x = x.permute(2, 0, 1).float()
        x = (x - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1)
        x = torch.nn.functional.pad(x, (0, self.size - nw, 0, self.size - nh))
        return x, (h, w), (nh, nw)

    def apply_coords(self, coords: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """(..., 2) pixel (x, y) in the original image -> the resized image's frame."""
        h, w = original_size
        nh, nw = sam_resize_shape(h, w, self.size)
        out = coords.clone().float()
        out[..., 0] = out[..., 0] * (nw / w)
        out[..., 1] = out[..., 1] * (nh / h)
        return out


def crop_window(width: int, height: int) -> tuple[float, float, float]:
    """Where the model's square view lies in the original image (shortest side resized, then
    center-cropped): (left, top, side) in original pixels, whatever the model's input size."""
    side = float(min(width, height))
    return (width - side) / 2.0, (height - side) / 2.0, side
