"""`mmfm serve`: every model behind one local HTTP server, and a web page to use them.

    GET  /                          the web page (search, classify, click-to-segment, ask and point)
    GET  /v1/models, /health        as llama.cpp's server and OpenAI answer them
    POST /v1/chat/completions       OpenAI chat; image_url parts go to the LLaVA, text to the LM
    POST /v1/embeddings             CLIP embeddings of texts and images (data URLs), OpenAI's format
    POST /v1/search                 the photo index: {query, image, k, image_weight}
    GET  /v1/thumbnails/{id}        a JPEG of an indexed file (only files in the index)
    POST /v1/classify               zero-shot: {image, labels, templates, top}
    POST /v1/segment/image          SAM: embed an image once -> image_id
    POST /v1/segment                SAM: {image_id, points [[x, y, label]], box, multimask} -> masks
    POST /v1/point, /v1/ask         the LLaVA: points (Molmo's format, in pixels) / an answer
    GET  /v1/info                   what is loaded (the page enables its panels from it)

Every model call runs on one worker thread through the queue of mmfm.serve.openai_api (one request at a
time on two cores; a full queue is a 503 with Retry-After); every client mistake is a 4xx with an
OpenAI-style error body. Bound to 127.0.0.1 unless told otherwise; an API key option guards /v1.
"""

from __future__ import annotations

import base64
import time
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from mmfm.errors import IndexFileError, InvalidPrompt
from mmfm.serve.images import ImagePolicy, data_url, read_image
from mmfm.serve.openai_api import BadRequest, create_app

STATIC = ("app.js", "style.css")
PUBLIC = ("/", "/static/app.js", "/static/style.css")
MAX_INPUTS = 256


class EmbeddingsRequest(BaseModel):
    model: str | None = None
    input: str | list[str] = Field(description="Texts, or images as data URLs (data:image/...;base64,...).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class SearchRequest(BaseModel):
    query: str | None = Field(None, max_length=2000)
    image: str | None = Field(None, description="An example image: a data URL (or base64).")
    k: int = Field(20, ge=1, le=1000)
    image_weight: float = Field(0.5, ge=0, le=1)


class ClassifyRequest(BaseModel):
    image: str
    labels: list[str] = Field(min_length=1, max_length=1000)
    templates: str = "world"
    top: int = Field(5, ge=1, le=1000)


class SegmentImageRequest(BaseModel):
    image: str


class SegmentRequest(BaseModel):
    image_id: str = Field(min_length=1, max_length=64)
    points: list[tuple[float, float, int]] = Field(default_factory=list, max_length=64,
                                                   description="[x, y, label]: label 1 foreground, 0 background")
    box: tuple[float, float, float, float] | None = None
    multimask: bool = True


class PointRequest(BaseModel):
    image: str
    query: str = Field(min_length=1, max_length=500)


class AskRequest(BaseModel):
    image: str
    question: str = Field(min_length=1, max_length=2000)
    max_tokens: int = Field(64, ge=1, le=512)


class _Index:
    """The photo index, reopened when `mmfm index` has written a newer generation."""

    def __init__(self, folder: Path):
        from mmfm.index.store import PhotoIndex, read_manifest

        self.folder, self._read_manifest, self._open = Path(folder), read_manifest, PhotoIndex
        self.index = PhotoIndex(folder)

    def get(self):
        gen = self._read_manifest(self.folder)["generation"]
        if gen != self.index.generation:
            self.index = self._open(self.folder)
        return self.index


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


def create_server(lm=None, *, llava=None, clip=None, sam=None, index=None, api_key: str | None = None,
                  names: dict | None = None, max_queue: int = 16, max_body_mb: float = 20.0,
                  image_policy: ImagePolicy | None = None, sam_cache: Path | None = None):
    """The FastAPI app of `mmfm serve`. Each of lm (LanguageModel), llava (Llava), clip (CLIP), sam
    (SAM) and index (a photo index folder) may be None; the routes that need a missing one answer 400
    saying how to start the server with it."""
    names = dict(names or {})
    policy = image_policy or ImagePolicy()
    app = create_app(lm, vlm=llava, api_key=api_key, model_name=names.get("lm"), vlm_name=names.get("llava", "llava"),
                     max_queue=max_queue, max_body=int(max_body_mb * 2**20), image_policy=policy,
                     public_paths=PUBLIC)  # the page and its files, like /health: no secrets in them
    queue = app.state.queue
    if clip is not None:
        app.state.models.append({"id": names.get("clip", "clip"), "object": "model", "owned_by": "mmfm",
                                 "kind": "embeddings"})
    if sam is not None:
        app.state.models.append({"id": names.get("sam", "sam"), "object": "model", "owned_by": "mmfm",
                                 "kind": "segmentation"})
    photo_index = _Index(index) if index is not None else None
    if photo_index is not None and clip is not None:
        from mmfm.index.search import check_model

        check_model(photo_index.index, clip)
    sessions = None
    if sam is not None:
        from mmfm.serve.segment import SamSessions

        sessions = SamSessions(sam, cache_dir=sam_cache)
    classifiers: OrderedDict = OrderedDict()

    def need(model, what: str, flag: str):
        if model is None:
            raise BadRequest(f"this server has no {what} (start it with {flag})")
        return model

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("mmfm.serve").joinpath("static", "index.html").read_text())

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC:
            raise BadRequest(f"no static file {name!r}", 404, "not_found")
        text = resources.files("mmfm.serve").joinpath("static", name).read_text()
        return Response(text, media_type="text/javascript" if name.endswith(".js") else "text/css")

    @app.get("/v1/info")
    async def info():
        out = {"models": {k: v is not None for k, v in
                          {"lm": lm, "llava": llava, "clip": clip, "sam": sam}.items()}, "index": None}
        if photo_index is not None:
            idx = photo_index.get()
            out["index"] = {"files": len(idx), "kind": idx.info["faiss"]["kind"], "root": idx.info["root"],
                            "model": idx.info["model"]}
        return out

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingsRequest):
        import torch

        m = need(clip, "CLIP for embeddings", "--clip DIR")
        items = [req.input] if isinstance(req.input, str) else list(req.input)
        if not items or len(items) > MAX_INPUTS:
            raise BadRequest(f"'input' must hold 1..{MAX_INPUTS} texts or images")
        if req.dimensions is not None and req.dimensions != m.config.embed_dim:
            raise BadRequest(f"this CLIP's embeddings have {m.config.embed_dim} dimensions, not {req.dimensions}")
        is_image = [s.strip()[:11].lower() == "data:image/" for s in items]
        pics = {i: read_image(s, policy) for i, s in enumerate(items) if is_image[i]}
        texts = [(i, s) for i, s in enumerate(items) if not is_image[i]]
        for i, s in texts:
            if not s.strip():
                raise BadRequest(f"input[{i}] is empty")

        def run():
            out = [None] * len(items)
            n_tokens = 0
            with torch.no_grad():
                if texts:
                    toks = m.tokenizer([s for _, s in texts])
                    n_tokens = int((toks != 0).sum())
                    v = m.encode_text(toks, normalize=True).float()
                    for (i, _), row in zip(texts, v):
                        out[i] = row.numpy()
                if pics:
                    x = torch.stack([m.preprocess(p) for p in pics.values()])
                    v = m.encode_image(x, normalize=True).float()
                    for i, row in zip(pics, v):
                        out[i] = row.numpy()
            return out, n_tokens

        t0 = time.perf_counter()
        vectors, n_tokens = await queue.run(run)
        data = []
        for i, v in enumerate(vectors):
            emb = (base64.b64encode(np.asarray(v, "<f4").tobytes()).decode() if req.encoding_format == "base64"
                   else [float(x) for x in v])
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": names.get("clip", "clip"),
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}, "latency_ms": _ms(t0)}

    @app.post("/v1/search")
    async def search(req: SearchRequest):
        from mmfm.index.search import encode_query

        m = need(clip, "CLIP to read queries", "--clip DIR")
        if photo_index is None:
            raise BadRequest("this server has no photo index (make one with `mmfm index PHOTOS/ --out "
                             "photos.mmfm`, then start it with --index photos.mmfm)")
        pic = read_image(req.image, policy) if req.image else None
        if pic is None and not (req.query or "").strip():
            raise BadRequest("give a text query, an example image, or both")
        t0 = time.perf_counter()

        def run():
            idx = photo_index.get()
            return idx, idx.search(encode_query(m, req.query, pic, req.image_weight), req.k)[0]

        idx, hits = await queue.run(run)
        return {"results": [{"rank": r, "id": h.id, "path": str(h.path), "name": h.path.name,
                             "score": round(h.score, 5), "thumbnail": f"/v1/thumbnails/{h.id}?g={idx.generation}"}
                            for r, h in enumerate(hits, 1)], "files": len(idx), "latency_ms": _ms(t0)}

    @app.get("/v1/thumbnails/{file_id}")
    async def thumbnail(file_id: int, size: int = 160):
        from mmfm.index.search import thumbnail as thumb

        if photo_index is None:
            raise BadRequest("this server has no photo index", 404, "not_found")
        if not 16 <= size <= 1024:
            raise BadRequest("size must be 16..1024")
        try:
            path = photo_index.get().path(file_id)
        except IndexFileError as e:
            raise BadRequest(str(e), 404, "not_found") from None
        return Response(await queue.run(lambda: thumb(path, size)), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    @app.post("/v1/classify")
    async def classify(req: ClassifyRequest):
        import torch

        from mmfm.eval.templates import TEMPLATE_SETS
        from mmfm.eval.zeroshot import build_classifier, check_labels

        m = need(clip, "CLIP to classify", "--clip DIR")
        names_ = check_labels([s.strip() for s in req.labels])
        if req.templates != "single" and req.templates not in TEMPLATE_SETS:
            raise BadRequest(f"unknown templates {req.templates!r}; use {', '.join(TEMPLATE_SETS)} or single")
        pic = read_image(req.image, policy)
        t0 = time.perf_counter()

        def run():
            key = (tuple(names_), req.templates)
            if key not in classifiers:
                tpl = ("a photo of {a} {}",) if req.templates == "single" else req.templates
                classifiers[key] = build_classifier(m, m.tokenizer, names_, tpl)
                while len(classifiers) > 32:
                    classifiers.popitem(last=False)
            with torch.no_grad():
                return (m.scale() * m.encode_image(m.preprocess(pic)[None], normalize=True) @ classifiers[key])[0]\
                    .softmax(-1)

        p = await queue.run(run)
        order = p.argsort(descending=True)[: req.top]
        return {"labels": [names_[i] for i in order], "probs": [round(p[i].item(), 5) for i in order],
                "latency_ms": _ms(t0)}

    @app.post("/v1/segment/image")
    async def segment_image(req: SegmentImageRequest):
        need(sessions, "SAM", "--sam DIR")
        pic = read_image(req.image, policy)
        t0 = time.perf_counter()
        res = await queue.run(lambda: sessions.embed(pic))
        return res | {"latency_ms": _ms(t0)}

    @app.post("/v1/segment")
    async def segment(req: SegmentRequest):
        from mmfm.serve.segment import UnknownImage

        need(sessions, "SAM", "--sam DIR")
        if not req.points and req.box is None:
            raise InvalidPrompt("give points ([x, y, label], label 1 foreground / 0 background) or a box")
        t0 = time.perf_counter()
        try:
            masks = await queue.run(lambda: sessions.predict(req.image_id, req.points, req.box, req.multimask))
        except UnknownImage:
            raise BadRequest(f"no image {req.image_id!r} here (it may have been evicted): send it again to "
                             f"/v1/segment/image", 404, "not_found") from None
        return {"masks": [{k: v for k, v in m.items() if k != "png"} | {"png": data_url(m["png"])} for m in masks],
                "latency_ms": _ms(t0)}

    @app.post("/v1/point")
    async def point(req: PointRequest):
        from mmfm.text.pointing import parse_points
        from mmfm.vision.transforms import crop_window

        m = need(llava, "LLaVA to point", "--llava DIR")
        pic = read_image(req.image, policy)
        q = req.query.strip()
        q = q[4:] if q.lower().startswith("the ") else q
        t0 = time.perf_counter()
        answer = await queue.run(lambda: m.ask(pic, f"Point to the {q}.", max_new_tokens=200))
        left, top, side = crop_window(pic.width, pic.height)
        pts = [[left + x * side / 100.0, top + y * side / 100.0] for x, y in parse_points(answer)]
        return {"answer": answer, "points": pts, "width": pic.width, "height": pic.height, "latency_ms": _ms(t0)}

    @app.post("/v1/ask")
    async def ask(req: AskRequest):
        m = need(llava, "LLaVA to answer questions about images", "--llava DIR")
        pic = read_image(req.image, policy)
        if m.config.image_token in req.question:
            raise BadRequest(f"the question may not contain {m.config.image_token!r}")
        t0 = time.perf_counter()
        answer = await queue.run(lambda: m.ask(pic, req.question, max_new_tokens=req.max_tokens))
        return {"answer": answer, "latency_ms": _ms(t0)}

    return app


def run(app, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False, max_queue: int = 16) -> None:
    import uvicorn

    print(f"serving at http://{host}:{port}/ (web page), http://{host}:{port}/v1 (OpenAI API, schema at "
          f"/openapi.json); Ctrl-C to stop", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", backlog=2048,
                timeout_keep_alive=5, limit_concurrency=max_queue + 64)


__all__ = ["create_server", "run"]
