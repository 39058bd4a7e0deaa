"""Queries against a photo index: text, an example image, or both (clip-retrieval's combined query: the
normalised text and image embeddings summed with weights, renormalised), a results page of thumbnails,
and text-to-image recall@k of a captions file through the index (the same numbers as `mmfm eval clip
--task retrieval` when the index holds exactly the captioned images)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import torch

from mmfm.errors import IndexFileError, InvalidPrompt
from mmfm.index.store import Hit, PhotoIndex

MAX_K = 10_000


@torch.no_grad()
def encode_query(model, text: str | None = None, image=None, image_weight: float = 0.5) -> np.ndarray:
    """(D,) L2-normalised query vector. `image`: anything `load_image` takes."""
    from mmfm.text.tokenizer import check_utf8
    from mmfm.vision.io import load_image

    if text is not None and not text.strip():
        text = None
    if text is None and image is None:
        raise InvalidPrompt("give a text query, an example image, or both")
    if not 0.0 <= image_weight <= 1.0:
        raise InvalidPrompt(f"the image weight must be in [0, 1], got {image_weight}")
    parts = []
    if text is not None:
        check_utf8(text)
        t = model.encode_text(model.tokenizer([text]), normalize=True)[0].float()
        parts.append((1.0 - image_weight if image is not None else 1.0, t))
    if image is not None:
        x = model.preprocess(load_image(image))[None]
        v = model.encode_image(x, normalize=True)[0].float()
        parts.append((image_weight if text is not None else 1.0, v))
    q = sum(w * v for w, v in parts)
    return torch.nn.functional.normalize(q, dim=0).numpy().astype(np.float32)


def search(index: PhotoIndex, model, text: str | None = None, image=None, k: int = 20,
           image_weight: float = 0.5) -> list[Hit]:
    if not 1 <= k <= MAX_K:
        raise InvalidPrompt(f"k must be 1..{MAX_K}, got {k}")
    return index.search(encode_query(model, text, image, image_weight), k)[0]


def check_model(index: PhotoIndex, model) -> None:
    """The query model must be the index's: vectors of another CLIP live in another space."""
    from mmfm.index.build import fingerprint

    if fingerprint(model) != index.info.get("fingerprint"):
        raise IndexFileError(f"{index.folder} was built with {index.info.get('model')}; query it with that model "
                             f"(another CLIP's vectors are not comparable)")


def thumbnail(path: Path, size: int = 160) -> bytes:
    """A JPEG thumbnail (longest side `size`) of an indexed file."""
    from mmfm.vision.io import load_image

    img = load_image(path)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def results_html(hits: list[Hit], query: str, title: str = "mmfm search") -> str:
    """A self-contained page (thumbnails inlined as data URLs: it opens anywhere, offline)."""
    cards = []
    for rank, h in enumerate(hits, 1):
        try:
            src = "data:image/jpeg;base64," + base64.b64encode(thumbnail(h.path)).decode()
            img = f'<img src="{src}" alt="{html.escape(h.path.name)}">'
        except Exception:  # noqa: BLE001 - a file gone since indexing still gets its row
            img = '<div class="gone">unreadable</div>'
        cards.append(f'<figure data-rank="{rank}" data-path="{html.escape(str(h.path))}">{img}<figcaption>'
                     f'{rank}. {html.escape(h.path.name)}<br><small>{h.score:.3f}</small></figcaption></figure>')
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>body{{font:14px sans-serif;"
            f"margin:1em}}figure{{display:inline-block;margin:4px;width:170px;vertical-align:top}}img{{max-width:160px;"
            f"max-height:160px;image-rendering:pixelated}}small{{color:#666}}</style><h1>{html.escape(query)}</h1>"
            f"<p>{len(hits)} results</p>" + "".join(cards))


@torch.no_grad()
def caption_recall(index: PhotoIndex, model, captioned, ks=(1, 5, 10)) -> dict:
    """Text-to-image recall@k of every caption in `captioned` (mmfm.data.labeled.Captioned) through the
    index: a caption scores a hit when its image is among the k files the index returns."""
    from mmfm.eval.zeroshot import encode_texts

    row = {(index.root / p).resolve(): i for i, p in enumerate(index.paths)}
    owners, texts, missing = [], [], 0
    for img, caps in captioned.items:
        i = row.get(Path(img).resolve())
        if i is None:
            missing += 1
            continue
        owners += [i] * len(caps)
        texts += caps
    if not texts:
        raise IndexFileError("none of the captioned images is in the index; index their folder first")
    q = encode_texts(model, model.tokenizer, texts).numpy()
    hits = index.search(q, max(ks))
    owners = np.array(owners)
    out = {}
    for k in ks:
        found = [o in {h.id for h in hs[:k]} for o, hs in zip(owners, hits)]
        out[f"image_retrieval_recall@{k}"] = round(float(np.mean(found)), 4)
    return out | {"texts": len(texts), "images_missing_from_index": missing}


__all__ = ["encode_query", "search", "check_model", "thumbnail", "results_html", "caption_recall"]
