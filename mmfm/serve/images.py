"""Images in requests, as OpenAI's `image_url` parts carry them: data URLs (`data:image/png;base64,...`,
or percent-encoded without `;base64`), bare base64 (what some clients send), `file://` URLs only under a
folder the server was started with (`--allow-files DIR`), http(s) URLs only when allowed
(`--allow-http`; off by default: a server that fetches any URL it is given can be aimed at the
machine's own network). Every image then goes through the safe loader (`mmfm.vision.io.load_image`),
so a bad one is an InvalidImage, which the server answers with a 400."""

from __future__ import annotations

import base64
import binascii
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mmfm.errors import InvalidImage
from mmfm.vision.io import load_image

MAX_IMAGE_BYTES = 16 << 20


@dataclass(frozen=True)
class ImagePolicy:
    allow_files: Path | None = None  # file:// URLs are read only under this folder
    allow_http: bool = False
    max_bytes: int = MAX_IMAGE_BYTES
    http_timeout_s: float = 10.0


def _b64(data: str, what: str) -> bytes:
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{what}: not valid base64") from None


def image_bytes(url: str, policy: ImagePolicy) -> bytes:
    if not isinstance(url, str) or not url.strip():
        raise InvalidImage("an image_url must be a non-empty string (a data URL, base64, or an allowed URL)")
    url = url.strip()
    head = url[:16].lower()
    if head.startswith("data:"):
        meta, sep, data = url[5:].partition(",")
        if not sep:
            raise InvalidImage("a data URL needs a comma: data:image/png;base64,<data>")
        if len(data) > policy.max_bytes * 4 // 3 + 16:
            raise InvalidImage(f"the image is over {policy.max_bytes} bytes")
        return _b64(data, "data URL") if meta.lower().endswith(";base64") else urllib.parse.unquote_to_bytes(data)
    if head.startswith("file:"):
        if policy.allow_files is None:
            raise InvalidImage("file URLs are off on this server (start it with --allow-files DIR to read files "
                               "under DIR); send the image as a data URL")
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)).resolve()
        root = policy.allow_files.resolve()
        if root != path and root not in path.parents:
            raise InvalidImage(f"file URLs are allowed only under {root}")
        if not path.is_file():
            raise InvalidImage(f"{path}: no such file")
        if path.stat().st_size > policy.max_bytes:
            raise InvalidImage(f"{path} is over {policy.max_bytes} bytes")
        return path.read_bytes()
    if head.startswith(("http://", "https://")):
        if not policy.allow_http:
            raise InvalidImage("http(s) image URLs are off on this server (start it with --allow-http); send the "
                               "image as a data URL")
        try:
            with urllib.request.urlopen(url, timeout=policy.http_timeout_s) as r:  # noqa: S310 - http(s) only
                data = r.read(policy.max_bytes + 1)
        except OSError as e:
            raise InvalidImage(f"could not fetch the image ({e})") from None
        if len(data) > policy.max_bytes:
            raise InvalidImage(f"the image at the URL is over {policy.max_bytes} bytes")
        return data
    if ":" in head:
        raise InvalidImage(f"unsupported image URL scheme {url.split(':', 1)[0][:20]!r}; send a data URL")
    if len(url) > policy.max_bytes * 4 // 3 + 16:
        raise InvalidImage(f"the image is over {policy.max_bytes} bytes")
    return _b64(url, "image")  # bare base64, as llama.cpp's server also accepts


def read_image(url: str, policy: ImagePolicy):
    """An image_url -> RGB PIL image, or InvalidImage."""
    return load_image(image_bytes(url, policy))


def data_url(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode()}"


__all__ = ["ImagePolicy", "read_image", "image_bytes", "data_url", "MAX_IMAGE_BYTES"]
