"""Safe image loading: anything a user may hand us becomes an RGB PIL image, or an `InvalidImage`
that says what was wrong. Never a crash, never a decompression bomb."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmfm.errors import InvalidImage

# Same order as PIL's own guard (~89 Mpx), but checked from the header, before any pixel is decoded.
MAX_PIXELS = 89_478_485


def load_image(src, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Path, bytes, file object, PIL image, numpy array (H, W[, C]) or torch tensor (C, H, W) -> RGB PIL.

    Applies EXIF orientation; converts L, LA, P, RGBA, CMYK, I;16, I and F modes to RGB (16-bit and
    float data are rescaled to 8 bits, not clipped); refuses images over `max_pixels` before decoding.
    """
    if isinstance(src, Image.Image):
        return _to_rgb(src, max_pixels, "image")
    if isinstance(src, np.ndarray) or type(src).__module__.startswith("torch"):
        return _from_array(src)
    name = "image bytes"
    if isinstance(src, (str, os.PathLike)):
        name = str(src)
        path = Path(src)
        if not path.is_file():
            raise InvalidImage(f"{name}: no such file; check the path")
        fp = path.open("rb")
    elif isinstance(src, (bytes, bytearray, memoryview)):
        fp = io.BytesIO(bytes(src))
    elif hasattr(src, "read"):
        fp, name = src, getattr(src, "name", "image stream")
    else:
        raise InvalidImage(f"cannot read an image from a {type(src).__name__}; pass a path, bytes, PIL image or array")
    try:
        with warnings.catch_warnings():
            # our own limit is checked from the header below; PIL's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(fp)
            except Image.DecompressionBombError as e:
                raise InvalidImage(f"{name}: refused before decoding: {e}; downscale the image") from e
            except UnidentifiedImageError as e:
                raise InvalidImage(
                    f"{name}: not a readable image; pass a PNG, JPEG, WebP, BMP, GIF or TIFF file"
                ) from e
            except (OSError, ValueError, SyntaxError) as e:
                raise InvalidImage(f"{name}: not a readable image ({e})") from e
            return _to_rgb(img, max_pixels, name)
    finally:
        if isinstance(src, (str, os.PathLike)):
            fp.close()


def _to_rgb(img: Image.Image, max_pixels: int, name: str) -> Image.Image:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InvalidImage(f"{name}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise InvalidImage(
            f"{name}: {w}x{h} = {w * h:,} pixels is over the limit of {max_pixels:,} "
            "(a possible decompression bomb); downscale it or raise max_pixels"
        )
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidImage(f"{name}: the image data is corrupt or truncated ({e}); re-save or re-download it") from e
    except Exception as e:  # noqa: BLE001 - a decoder may raise anything on a hostile file
        raise InvalidImage(f"{name}: the image could not be decoded ({type(e).__name__}: {e})") from e
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "I":
            arr = arr / 257.0 if arr.max(initial=0) > 255 else arr
        else:  # F: assume [0, 1] when it fits, else min-max
            lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
            arr = arr * 255.0 if 0 <= lo and hi <= 1 else (arr - lo) / max(hi - lo, 1e-12) * 255.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    elif mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _from_array(x) -> Image.Image:
    if not isinstance(x, np.ndarray):  # torch tensor (C, H, W) or (H, W)
        if x.ndim not in (2, 3) or x.is_complex():
            raise InvalidImage(f"tensor of shape {tuple(x.shape)} is not an image; expected (C, H, W) or (H, W)")
        x = x.detach().cpu()
        x = x.float() if str(x.dtype) == "torch.bfloat16" else x  # numpy has no bfloat16
        x = x.permute(1, 2, 0).numpy() if x.ndim == 3 else x.numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "buif":
        raise InvalidImage(f"an array of {arr.dtype} is not an image; pass numbers (uint8 0..255 or floats 0..1)")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or 0 in arr.shape:
        raise InvalidImage(f"array of shape {arr.shape} is not an image; expected (H, W), (H, W, 3) or (H, W, 4)")
    if arr.dtype != np.uint8:
        if not np.isfinite(arr).all():
            raise InvalidImage("image array contains NaN or infinite values")
        if arr.dtype.kind == "f" and arr.min() >= 0 and arr.max() <= 1:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return img.convert("RGB")
