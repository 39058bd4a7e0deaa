"""Compositionality benchmarks with their published scoring, reading their public file formats from a
local path (nothing is downloaded), plus the world's own suite of the same kinds.

Suites and formats (`root` is the folder the user downloaded):
  winoground   examples.jsonl ({id, caption_0, caption_1, image_0, image_1, tag?}) + images/<name>.png
               text score: s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1); image score: s(c0,i0) > s(c0,i1)
               and s(c1,i1) > s(c1,i0); group: both (strict >, as the paper).
  aro-relation visual_genome_relation.json ([{image_path, bbox_x, bbox_y, bbox_w, bbox_h, true_caption,
               false_caption, relation_name}]) + images/: the box is cropped; macro accuracy over relations.
  aro-attribution visual_genome_attribution.json (same, with `attributes`): macro accuracy over attribute pairs.
  aro-coco-order / aro-flickr-order  the Karpathy test split ARO reads (coco_karpathy_test.json /
               flickr30k_test.json: [{image, caption: [...]}]); each caption gets ARO's four shuffles
               (nouns and adjectives, all but nouns and adjectives, within trigrams, trigrams), or
               a list of {image, caption_options} with the true caption first; Precision@1 = the
               true caption ranked first.
  sugarcrepe   {add_att, add_obj, replace_att, replace_obj, replace_rel, swap_att, swap_obj}.json
               ({id: {filename, caption, negative_caption}}) + images/: s(pos) > s(neg) strictly; per
               subset, and micro averages per category (add, replace, swap).
  crepe        a JSONL of {image, positive, negatives: [...]}: recall@k of the positive among
               positive + negatives (k = 1, 3, 5), CREPE's retrieval protocol.
An item with missing fields or an unreadable image is reported (index, reason) and skipped, and the
skipped count is part of the result: never silently dropped.

`scorer(images, texts) -> (len(images), len(texts))` similarities: `clip_scorer(model)` makes one.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from mmfm.errors import ConfigError, InvalidImage
from mmfm.eval.world_compositionality import world_suite
from mmfm.text.perturb import perturb
from mmfm.vision.io import load_image

SUGARCREPE = {"add": ("add_att", "add_obj"), "replace": ("replace_att", "replace_obj", "replace_rel"),
              "swap": ("swap_att", "swap_obj")}
SUITES = ("winoground", "aro-relation", "aro-attribution", "aro-coco-order", "aro-flickr-order", "sugarcrepe",
          "crepe", "world")


def clip_scorer(model, batch: int = 64):
    """Cosine similarities from an mmfm CLIP (its own preprocessing and tokenizer)."""
    import torch

    pre = model.preprocess

    @torch.inference_mode()
    def score(images, texts):
        img = torch.cat([model.encode_image(torch.stack([pre(im) for im in images[i : i + batch]]), normalize=True)
                         for i in range(0, len(images), batch)])
        txt = torch.cat([model.encode_text(model.tokenizer(texts[i : i + batch]), normalize=True)
                         for i in range(0, len(texts), batch)])
        return (img @ txt.T).float().numpy()

    return score


class Skips:
    def __init__(self):
        self.items: list[tuple[str, str]] = []

    def add(self, where, reason: str) -> None:
        self.items.append((str(where), reason))

    def report(self) -> dict:
        return {"skipped": len(self.items), "skipped_items": [{"item": w, "reason": r} for w, r in self.items[:50]]}


def _image(path: Path, box=None):
    img = load_image(path)
    if box is not None:
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0:
            raise InvalidImage(f"empty box {box}")
        img = img.crop((int(x), int(y), int(x + w), int(y + h)))
    return img


def _need(item: dict, keys) -> None:
    missing = [k for k in keys if k not in item or item[k] in (None, "")]
    if missing:
        raise KeyError(f"missing field(s) {', '.join(missing)}")


def _read_json(path: Path):
    if not path.is_file():
        raise ConfigError(f"{path} not found: put the benchmark's file there (mmfm does not download it)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e


# ------------------------------------------------------------------------------------------- scoring
def winoground_scores(s: np.ndarray) -> dict:
    """s: (N, 2, 2) with s[n, c, i] = similarity of caption c and image i. Strict >, as published."""
    text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    return {
        "text": float(text.mean()),
        "image": float(image.mean()),
        "group": float((text & image).mean()),
        "n": len(s),
    }


def macro_accuracy(correct, groups) -> float:
    by = defaultdict(list)
    for c, g in zip(correct, groups):
        by[g].append(bool(c))
    return float(np.mean([np.mean(v) for v in by.values()])) if by else float("nan")


def recall_at_k(scores: list[np.ndarray], ks=(1, 3, 5)) -> dict:
    """scores[n]: similarities of [positive, *negatives]; recall@k = positive within the top k."""
    ranks = np.array([int((row[1:] >= row[0]).sum()) for row in scores])  # ties count against the positive
    return {f"recall@{k}": float((ranks < k).mean()) for k in ks}


# ------------------------------------------------------------------------------------------- suites
def eval_winoground(root: Path, scorer) -> dict:
    path = root / "examples.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} not found: Winoground's examples.jsonl and images/ go in {root}")
    skips, sims = Skips(), []
    for n, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
            _need(ex, ("caption_0", "caption_1", "image_0", "image_1"))
            imgs = [_image(_find(root / "images", ex[f"image_{i}"])) for i in (0, 1)]
        except (KeyError, InvalidImage, json.JSONDecodeError, FileNotFoundError) as e:
            skips.add(f"line {n + 1}", str(e))
            continue
        sims.append(scorer(imgs, [ex["caption_0"], ex["caption_1"]]).T)  # (caption, image)
    out = winoground_scores(np.array(sims)) if sims else {"n": 0}
    return {**out, **skips.report()}


def _find(folder: Path, name: str) -> Path:
    for cand in (folder / name, folder / f"{name}.png", folder / f"{name}.jpg"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"image {name!r} not in {folder}")


def eval_aro_vg(root: Path, scorer, kind: str) -> dict:
    fname = "visual_genome_relation.json" if kind == "relation" else "visual_genome_attribution.json"
    items = _read_json(root / fname)
    skips, correct, groups = Skips(), [], []
    for n, it in enumerate(items):
        try:
            _need(it, ("image_path", "true_caption", "false_caption", "bbox_x", "bbox_y", "bbox_w", "bbox_h"))
            group = it.get("relation_name") if kind == "relation" else "_".join(it.get("attributes") or [])
            if not group:
                raise KeyError("missing field relation_name" if kind == "relation" else "missing field attributes")
            img = _image(_find(root / "images", Path(it["image_path"]).name),
                         (it["bbox_x"], it["bbox_y"], it["bbox_w"], it["bbox_h"]))
        except (KeyError, InvalidImage, FileNotFoundError, TypeError, ValueError) as e:
            skips.add(f"item {n}", str(e))
            continue
        s = scorer([img], [it["true_caption"], it["false_caption"]])[0]
        correct.append(s[0] > s[1])
        groups.append(group)
    return {"macro_accuracy": macro_accuracy(correct, groups), "n": len(correct), **skips.report()}


ARO_ORDER_SHUFFLES = ("shuffle_nouns_adjectives", "shuffle_allbut_nouns_adjectives", "shuffle_within_trigrams",
                      "shuffle_trigrams")


def _order_options(caption: str, rng) -> list[str]:
    return [caption] + [perturb(caption, k, rng) or caption for k in ARO_ORDER_SHUFFLES]


def eval_aro_order(root: Path, scorer, name: str, seed: int = 0) -> dict:
    karpathy = {"aro-coco-order": "coco_karpathy_test.json", "aro-flickr-order": "flickr30k_test.json"}[name]
    own = {"aro-coco-order": "coco_order.json", "aro-flickr-order": "flickr30k_order.json"}[name]
    path = root / karpathy if (root / karpathy).is_file() else root / own
    items = _read_json(path)
    rng = np.random.default_rng(seed)
    skips, hits = Skips(), []
    for n, it in enumerate(items):
        try:
            if "caption_options" in it:
                _need(it, ("image", "caption_options"))
                cases = [list(it["caption_options"])]
            else:
                _need(it, ("image", "caption"))
                caps = it["caption"] if isinstance(it["caption"], list) else [it["caption"]]
                cases = [_order_options(c, rng) for c in caps]
            if any(len(c) < 2 for c in cases):
                raise KeyError("caption_options needs the true caption and at least one shuffle")
            img = _image(_find(root / "images", Path(it["image"]).name))
        except (KeyError, InvalidImage, FileNotFoundError, TypeError) as e:
            skips.add(f"item {n}", str(e))
            continue
        for options in cases:
            s = scorer([img], options)[0]
            hits.append(int(np.argmax(s)) == 0)  # ARO: precision@1 of the unshuffled caption (index 0)
    return {"precision@1": float(np.mean(hits)) if hits else float("nan"), "n": len(hits), **skips.report()}


def eval_sugarcrepe(root: Path, scorer, image_dir: Path | None = None) -> dict:
    image_dir = image_dir or root / "images"
    out, pooled = {}, defaultdict(list)
    skipped = Skips()
    found = False
    for cat, subsets in SUGARCREPE.items():
        for sub in subsets:
            path = root / f"{sub}.json"
            if not path.is_file():
                continue
            found = True
            correct = []
            for key, it in _read_json(path).items():
                try:
                    _need(it, ("filename", "caption", "negative_caption"))
                    img = _image(_find(image_dir, it["filename"]))
                except (KeyError, InvalidImage, FileNotFoundError, TypeError) as e:
                    skipped.add(f"{sub}:{key}", str(e))
                    continue
                s = scorer([img], [it["caption"], it["negative_caption"]])[0]
                correct.append(bool(s[0] > s[1]))
            out[sub] = {"accuracy": float(np.mean(correct)) if correct else float("nan"), "n": len(correct)}
            pooled[cat] += correct
    if not found:
        raise ConfigError(f"no SugarCREPE subset file (add_att.json, ...) in {root}")
    out["categories"] = {c: float(np.mean(v)) for c, v in pooled.items() if v}
    return {**out, **skipped.report()}


def eval_crepe(root: Path, scorer) -> dict:
    path = root / "crepe.jsonl" if root.is_dir() else root
    if not path.is_file():
        raise ConfigError(f"{path} not found: a JSONL of {{image, positive, negatives}}")
    folder = path.parent
    skips, rows = Skips(), []
    for n, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            it = json.loads(line)
            _need(it, ("image", "positive", "negatives"))
            if not isinstance(it["negatives"], list) or not it["negatives"]:
                raise KeyError("negatives must be a non-empty list")
            img = _image(_find(folder, it["image"]) if not Path(it["image"]).is_absolute() else Path(it["image"]))
        except (KeyError, InvalidImage, FileNotFoundError, json.JSONDecodeError, TypeError) as e:
            skips.add(f"line {n + 1}", str(e))
            continue
        rows.append(scorer([img], [it["positive"], *it["negatives"]])[0])
    return {**(recall_at_k(rows) if rows else {}), "n": len(rows), **skips.report()}


def run_suite(suite: str, root, scorer, **kwargs) -> dict:
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; use one of {', '.join(SUITES)}")
    root = Path(root) if root is not None else None
    if suite != "world" and (root is None or not root.exists()):
        raise ConfigError(f"--data {root}: the {suite} files are not there (mmfm does not download them)")
    if suite == "winoground":
        return eval_winoground(root, scorer)
    if suite == "aro-relation":
        return eval_aro_vg(root, scorer, "relation")
    if suite == "aro-attribution":
        return eval_aro_vg(root, scorer, "attribution")
    if suite in ("aro-coco-order", "aro-flickr-order"):
        return eval_aro_order(root, scorer, suite)
    if suite == "sugarcrepe":
        return eval_sugarcrepe(root, scorer)
    if suite == "crepe":
        return eval_crepe(root, scorer)

    return world_suite(scorer, **kwargs)


def flatten(result: dict, prefix: str = "") -> dict:
    """Nested result -> {"a/b": number} for tables and CSV (lists left out)."""
    out = {}
    for k, v in result.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def write_results(results: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compositionality.json").write_text(json.dumps(results, indent=2))
    rows = [(suite, k, v) for suite, res in results.items() for k, v in flatten(res).items()]
    with open(out / "compositionality.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["suite", "metric", "value"])
        w.writerows(rows)
    return out / "compositionality.json", out / "compositionality.csv"


__all__ = [
    "SUITES",
    "clip_scorer",
    "run_suite",
    "winoground_scores",
    "recall_at_k",
    "macro_accuracy",
    "eval_winoground",
    "eval_aro_vg",
    "eval_aro_order",
    "eval_sugarcrepe",
    "eval_crepe",
    "write_results",
    "flatten",
]
