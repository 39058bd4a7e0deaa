"""VisProg's modules, written for mmfm's models and OpenCV.

Regions (`Region`: box, optional mask, label, score) are what localisation modules return and editing
modules consume. Models come from the interpreter's `Context`: `clip` (Loc's open-vocabulary scoring,
Select, Classify), `sam` (Seg), `vqa` (any callable(image, question) -> str), `llm` (List). Faces come
from OpenCV's Haar cascade, people from faces (or OpenCV's HOG people detector); masks for editing
are a region's own mask or its box refined by OpenCV's grabCut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mmfm.chain.visprog.emoji import render_emoji
from mmfm.chain.visprog.interpreter import Context, ModuleSpec, Param, Registry
from mmfm.chain.visprog.safe_eval import safe_eval
from mmfm.errors import DependencyError, ProgramError
from mmfm.models.sam import SamAutomaticMaskGenerator
from mmfm.vision.masks import nms


@dataclass
class Region:
    box: tuple  # (x0, y0, x1, y1) pixels, exclusive end
    label: str = ""
    score: float = 1.0
    mask: np.ndarray | None = None  # (H, W) bool over the whole image

    def crop(self, image: Image.Image, pad: float = 0.0) -> Image.Image:
        x0, y0, x1, y1 = self.box
        dx, dy = (x1 - x0) * pad, (y1 - y0) * pad
        return image.crop((max(0, int(x0 - dx)), max(0, int(y0 - dy)), min(image.width, int(x1 + dx)),
                           min(image.height, int(y1 + dy))))


HALVES = {"TOP": lambda w, h: (0, 0, w, h // 2), "BOTTOM": lambda w, h: (0, h // 2, w, h),
          "LEFT": lambda w, h: (0, 0, w // 2, h), "RIGHT": lambda w, h: (w // 2, 0, w, h)}
FACE_WORDS = {"face", "faces", "head", "heads"}
PERSON_WORDS = {"person", "people", "man", "men", "woman", "women", "boy", "girl", "child", "human", "astronaut",
                "player", "kid"}


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise DependencyError("this module needs OpenCV: pip install 'opencv-python-headless<5'") from e
    return cv2


# ------------------------------------------------------------------------------------------ detection
def detect_faces(image: Image.Image) -> list[Region]:
    cv2 = _cv2()
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise DependencyError(f"OpenCV's face cascade is missing ({path}); opencv-python-headless<5 ships it")
    gray = cv2.cvtColor(_rgb(image), cv2.COLOR_RGB2GRAY)
    side = max(24, min(image.size) // 12)
    found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
    regions = [Region((int(x), int(y), int(x + w), int(y + h)), "face") for x, y, w, h in found]
    return sorted(regions, key=lambda r: -(r.box[2] - r.box[0]) * (r.box[3] - r.box[1]))


def detect_people(image: Image.Image) -> list[Region]:
    """A person per detected face, the face box extended to a body box (3 face widths wide, down to
    the bottom of the image): photos of people are mostly head and shoulders, which OpenCV's full-body
    HOG detector misses or mistakes. Without a face, the HOG people detector's confident boxes."""
    faces = detect_faces(image)
    if faces:
        out = []
        for f in faces:
            x0, y0, x1, y1 = f.box
            w = x1 - x0
            out.append(Region((max(0, x0 - w), max(0, y0 - w // 3), min(image.width, x1 + w), image.height), "person"))
        return out
    cv2 = _cv2()
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    rects, weights = hog.detectMultiScale(cv2.cvtColor(_rgb(image), cv2.COLOR_RGB2GRAY), winStride=(8, 8), scale=1.05)
    return [Region((int(x), int(y), int(x + w), int(y + h)), "person", float(s))
            for (x, y, w, h), s in zip(rects, np.ravel(weights)) if s > 0.5]


def clip_scores(ctx: Context, crops: list[Image.Image], texts: list[str]) -> np.ndarray:
    """(crops, texts) cosine similarities x the CLIP's logit scale."""
    import torch

    clip = ctx.model("clip")
    with torch.inference_mode():
        x = torch.stack([clip.preprocess(c) for c in crops])
        img = clip.encode_image(x, normalize=True)
        txt = clip.encode_text(clip.tokenizer([f"a photo of {t}" for t in texts]), normalize=True)
        return (clip.scale() * img @ txt.T).float().numpy()


def _candidates(ctx: Context, image: Image.Image) -> list[Region]:
    """Regions to score for an open-vocabulary query: SAM's automatic masks when a SAM is available,
    else a multi-scale grid of windows."""
    if "sam" in ctx.models or "sam" in ctx.loaders:
        regions = segment(ctx, image)
        if regions:
            return regions
    w, h = image.size
    out = []
    for frac in (1.0, 0.5, 0.33):
        bw, bh = max(8, int(w * frac)), max(8, int(h * frac))
        for y in np.linspace(0, h - bh, max(1, round(1 / frac) * 2 - 1)).astype(int):
            for x in np.linspace(0, w - bw, max(1, round(1 / frac) * 2 - 1)).astype(int):
                out.append(Region((int(x), int(y), int(x + bw), int(y + bh))))
    return out


def locate(ctx: Context, image: Image.Image, object: str) -> list[Region]:  # noqa: A002 - VisProg's name
    query = str(object).strip()
    if query.upper() in HALVES:
        return [Region(HALVES[query.upper()](*image.size), query.lower())]
    if query.lower() in FACE_WORDS:
        return detect_faces(image)
    if query.lower() in PERSON_WORDS:
        return detect_people(image)
    cands = _candidates(ctx, image)
    # a SAM region is scored on its masked crop (what is not the object greyed out), as Select does: its
    # box also holds the neighbours' pixels
    s = clip_scores(ctx, [_masked_crop(image, c) for c in cands], [query, "a background", "an object"])
    probs = np.exp(s - s.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    keep = sorted((Region(c.box, query, float(p), c.mask) for c, p in zip(cands, probs[:, 0]) if p > 0.5),
                  key=lambda r: -r.score)
    if len(keep) > 1:  # overlapping windows / masks of one object count once
        import torch


        idx = nms(torch.tensor([r.box for r in keep], dtype=torch.float32),
                  torch.tensor([r.score for r in keep]), iou_threshold=0.5)
        keep = [keep[i] for i in sorted(idx.tolist())]
    return keep


def segment(ctx: Context, image: Image.Image) -> list[Region]:
    gen = SamAutomaticMaskGenerator(ctx.model("sam"), **ctx.options.get("amg", {}))
    out = []
    for m in gen.generate(_rgb(image)):
        x, y, w, h = m["bbox"]
        out.append(Region((int(x), int(y), int(x + w), int(y + h)), "", float(m["predicted_iou"]), m["segmentation"]))
    return out


def _masked_crop(image: Image.Image, r: Region) -> Image.Image:
    if r.mask is None:
        return r.crop(image)
    arr = _rgb(image).copy()
    arr[~r.mask] = 127  # grey out what is not the object, then crop its box
    return r.crop(Image.fromarray(arr))


def select(ctx: Context, image: Image.Image, object: list, query: str, category: str | None = None) -> list[Region]:  # noqa: A002
    """The region that best matches each comma-separated query (VisProg's Select)."""
    if not object:
        return []
    queries = [q.strip() for q in str(query).split(",") if q.strip()]
    if not queries:
        raise ProgramError("Select: the query is empty")
    s = clip_scores(ctx, [_masked_crop(image, r) for r in object], queries + ([category] if category else []))
    best = sorted({int(s[:, i].argmax()) for i in range(len(queries))})
    return [Region(object[i].box, queries[int(s[i, : len(queries)].argmax())], float(s[i].max()), object[i].mask)
            for i in best]


def classify(ctx: Context, image: Image.Image, object: list, categories: str) -> list[Region]:  # noqa: A002
    cats = [c.strip() for c in str(categories).split(",") if c.strip()]
    if not cats:
        raise ProgramError("Classify: no categories given")
    if not object:
        return []
    s = clip_scores(ctx, [_masked_crop(image, r) for r in object], cats)
    return [Region(r.box, cats[int(row.argmax())], float(row.max()), r.mask) for r, row in zip(object, s)]


# ------------------------------------------------------------------------------------------ crops
def _first_box(box: list, module: str) -> tuple:
    if not box:
        raise ProgramError(f"{module}: no region to crop around (the localisation found nothing)")
    return box[0].box


def crop(ctx, image: Image.Image, box: list) -> Image.Image:
    return Region(_first_box(box, "Crop")).crop(image, pad=0.1)


def crop_side(side: str):
    def fn(ctx, image: Image.Image, box: list) -> Image.Image:
        x0, y0, x1, y1 = _first_box(box, f"Crop{side}")
        w, h = image.size
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        rect = {"LeftOf": (0, 0, max(1, cx), h), "RightOf": (min(w - 1, cx), 0, w, h),
                "Above": (0, 0, w, max(1, cy)), "Below": (0, min(h - 1, cy), w, h)}[side]
        return image.crop(rect)
    return fn


# ------------------------------------------------------------------------------------------ editing
def region_mask(image: Image.Image, regions: list[Region], refine: bool = True) -> np.ndarray:
    """Union of the regions' masks; a region without one gets its box refined by grabCut."""
    h, w = image.height, image.width
    out = np.zeros((h, w), bool)
    for r in regions:
        if r.mask is not None:
            out |= r.mask
            continue
        x0, y0, x1, y1 = (int(v) for v in r.box)
        box = np.zeros((h, w), bool)
        box[max(0, y0) : y1, max(0, x0) : x1] = True
        if refine and (x1 - x0) >= 8 and (y1 - y0) >= 8 and box.sum() < 0.95 * h * w:
            cv2 = _cv2()
            gc = np.zeros((h, w), np.uint8)
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            try:
                cv2.grabCut(cv2.cvtColor(_rgb(image), cv2.COLOR_RGB2BGR), gc,
                            (max(0, x0), max(0, y0), x1 - max(0, x0), y1 - max(0, y0)), bgd, fgd, 4,
                            cv2.GC_INIT_WITH_RECT)
                fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
                if fg.sum() > 0.05 * box.sum():  # grabCut can collapse on flat images: keep the box then
                    box = fg
            except cv2.error:
                pass
        out |= box
    return out


def color_pop(ctx, image: Image.Image, object: list) -> Image.Image:  # noqa: A002
    """Grayscale everywhere except the objects."""
    m = region_mask(image, object)
    rgb = _rgb(image)
    gray = np.asarray(image.convert("L").convert("RGB"))
    return Image.fromarray(np.where(m[..., None], rgb, gray).astype(np.uint8))


def bg_blur(ctx, image: Image.Image, object: list) -> Image.Image:  # noqa: A002
    """Gaussian blur everywhere except the objects (mask edges softened)."""
    m = region_mask(image, object)
    blurred = image.convert("RGB").filter(ImageFilter.GaussianBlur(radius=max(2, min(image.size) // 60)))
    alpha = Image.fromarray((m * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
    return Image.composite(image.convert("RGB"), blurred, alpha)


def tag(ctx, image: Image.Image, object: list) -> Image.Image:  # noqa: A002
    out = image.convert("RGB").copy()
    d = ImageDraw.Draw(out)
    width = max(1, min(image.size) // 150)
    for r in object:
        d.rectangle(r.box, outline=(255, 40, 40), width=width)
        if r.label:
            x0, y0 = r.box[0], max(0, r.box[1] - 12)
            d.rectangle((x0, y0, x0 + 7 * len(r.label) + 4, y0 + 12), fill=(255, 40, 40))
            d.text((x0 + 2, y0), r.label, fill=(255, 255, 255))
    return out


def emoji(ctx, image: Image.Image, object: list, emoji: str) -> Image.Image:  # noqa: A002

    out = image.convert("RGB").copy()
    for r in object:
        x0, y0, x1, y1 = r.box
        side = max(x1 - x0, y1 - y0)
        e = render_emoji(emoji, side)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        out.paste(e, (cx - side // 2, cy - side // 2), e)
    return out


def replace(ctx: Context, image: Image.Image, object: list, prompt: str) -> Image.Image:  # noqa: A002
    """Fill the objects: with the context's `inpaint` callable (image, mask, prompt) -> image when one
    is given (e.g. a diffusers inpainting pipeline), else OpenCV's Telea inpainting (the prompt is then
    only recorded: a classical inpainter cannot draw what it names)."""
    m = region_mask(image, object)
    if "inpaint" in ctx.models or "inpaint" in ctx.loaders:
        return ctx.model("inpaint")(image.convert("RGB"), Image.fromarray(m.astype(np.uint8) * 255), prompt)
    cv2 = _cv2()
    mask = cv2.dilate(m.astype(np.uint8) * 255, np.ones((5, 5), np.uint8))
    bgr = cv2.cvtColor(_rgb(image), cv2.COLOR_RGB2BGR)
    return Image.fromarray(cv2.cvtColor(cv2.inpaint(bgr, mask, 5, cv2.INPAINT_TELEA), cv2.COLOR_BGR2RGB))


# ------------------------------------------------------------------------------------------ text
def vqa(ctx: Context, image: Image.Image, question: str) -> str:
    answer = ctx.model("vqa")(image, str(question))
    if not isinstance(answer, str):
        raise ProgramError(f"Vqa: the VQA model answered a {type(answer).__name__}, not text")
    return answer.strip()


def count(ctx, box: list) -> int:
    return len(box)


def list_items(ctx: Context, query: str, max: int = 10) -> list:  # noqa: A002 - VisProg's name
    n = int(max)
    if not 1 <= n <= 50:
        raise ProgramError("List: max must be between 1 and 50")
    reply = ctx.model("llm").complete(f"List {n} {query}. Answer with the items only, separated by commas.",
                                      max_tokens=16 * n, temperature=0.0)
    items = [re.sub(r"^\s*(\d+[.)]|[-*])\s*", "", s).strip(" .") for s in re.split(r"[,\n]", reply)]
    return [s for s in items if s][:n]


def eval_expr(ctx, env: dict, expr: str):
    v = safe_eval(expr, {k: val for k, val in env.items() if isinstance(val, (str, int, float, bool))})
    return ("yes" if v else "no") if isinstance(v, bool) else v


def result(ctx, var):
    return var


def default_registry() -> Registry:
    """Every module with its parameters and the tasks that use it."""
    q, tw, ed, tg = "image_question", "two_images", "edit", "tag"
    img, reg = Param("image"), Param("regions")
    r = Registry()
    add = r.add
    add(ModuleSpec("Loc", locate, {"image": img, "object": Param("text")}, "regions", (q, tw, ed, tg),
                   "boxes of a text query; TOP/BOTTOM/LEFT/RIGHT give image halves"))
    add(ModuleSpec("FaceDet", lambda ctx, image: detect_faces(image), {"image": img}, "regions", (ed, tg)))
    add(ModuleSpec("Seg", lambda ctx, image: segment(ctx, image), {"image": img}, "regions", (ed, tg)))
    add(ModuleSpec("Select", select, {"image": img, "object": reg, "query": Param("text"),
                                      "category": Param("text", required=False)}, "regions", (ed, tg)))
    add(ModuleSpec("Classify", classify, {"image": img, "object": reg, "categories": Param("text")}, "regions", (tg,)))
    add(ModuleSpec("Vqa", vqa, {"image": img, "question": Param("text")}, "text", (q, tw)))
    add(ModuleSpec("Count", count, {"box": reg}, "number", (q, tw)))
    add(ModuleSpec("Crop", crop, {"image": img, "box": reg}, "image", (q, tw)))
    for side in ("LeftOf", "RightOf", "Above", "Below"):
        add(ModuleSpec(f"Crop{side}", crop_side(side), {"image": img, "box": reg}, "image", (q, tw)))
    add(ModuleSpec("ColorPop", color_pop, {"image": img, "object": reg}, "image", (ed,)))
    add(ModuleSpec("BgBlur", bg_blur, {"image": img, "object": reg}, "image", (ed,)))
    add(ModuleSpec("Tag", tag, {"image": img, "object": reg}, "image", (ed, tg)))
    add(ModuleSpec("Emoji", emoji, {"image": img, "object": reg, "emoji": Param("text", literal=True)}, "image", (ed,)))
    add(ModuleSpec("Replace", replace, {"image": img, "object": reg, "prompt": Param("text")}, "image", (ed,)))
    add(ModuleSpec("List", list_items, {"query": Param("text"), "max": Param("number", required=False)}, "list", (tg,)))
    add(ModuleSpec("Eval", eval_expr, {"expr": Param("text", literal=True)}, "any", (q, tw), needs_env=True))
    add(ModuleSpec("Result", result, {"var": Param("any")}, "any"))
    return r


__all__ = ["Region", "default_registry", "detect_faces", "detect_people", "locate", "region_mask"]
