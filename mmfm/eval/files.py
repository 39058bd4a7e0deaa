"""Evaluation on a user's files (mmfm.data readers): CLIP zero-shot, linear probe and retrieval in
CLIP_benchmark's definitions, SAM's mIoU from one point and from a box as the world evaluation scores
it, and LLaVA's answers against the references (exact match, and the loss of the reference answers)."""

from __future__ import annotations

import numpy as np
import torch

from mmfm.data.files import DataReport, ImageCache
from mmfm.errors import DataError
from mmfm.eval.linear_probe import linear_probe
from mmfm.eval.retrieval import recall_at_k
from mmfm.eval.sam_world import center_point
from mmfm.eval.zeroshot import build_classifier, encode_images, encode_texts, evaluate
from mmfm.vision.masks import mask_ious


def _pixels(model, items, report: DataReport, batch: int = 64):
    """Image features (N, D) of (path, value) items and the values of the images that decoded."""
    cache, feats, kept = ImageCache(report), [], []
    pre = model.preprocess
    for start in range(0, len(items), batch):
        xs = []
        for path, value in items[start : start + batch]:
            img = cache.load(path)
            if img is not None:
                xs.append(pre(img))
                kept.append(value)
        if xs:
            feats.append(encode_images(model, torch.stack(xs)))
    if not feats:
        raise DataError(f"{report.source}: no image could be read")
    return torch.cat(feats), kept


@torch.no_grad()
def zeroshot_files(model, labeled, templates="openai", prompts: dict | None = None) -> dict:
    """Top-1 / top-5 / mean per-class recall over `labeled` (mmfm.data.labeled.Labeled)."""
    x, y = _pixels(model, labeled.items, labeled.report)
    clf = build_classifier(model, model.tokenizer, labeled.classnames, templates, prompts=prompts)
    res = evaluate(x, torch.tensor(y), clf)
    return {**{k: round(v, 4) for k, v in res.items()}, "images": len(y), "classes": len(labeled.classnames)}


@torch.no_grad()
def linear_probe_files(model, train, test, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Logistic regression on frozen features of `train` (a seeded `val_fraction` of it picks the L2
    penalty), scored on `test`; both Labeled with the same classes."""
    if train.classnames != test.classnames:
        raise DataError("the train and test data of a linear probe must have the same classes, in the same order")
    xt, yt = _pixels(model, train.items, train.report)
    xs, ys = _pixels(model, test.items, test.report)
    yt = torch.tensor(yt)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(yt)))
    n_val = max(1, int(len(yt) * val_fraction))
    tr, va = order[n_val:], order[:n_val]
    res = linear_probe((xt[tr], yt[tr]), (xt[va], yt[va]), (xs, torch.tensor(ys)), len(train.classnames))
    return {**res, "train_images": len(yt), "test_images": len(ys)}


@torch.no_grad()
def retrieval_files(model, captioned) -> dict:
    """Recall@1/5/10 text->image and image->text over `captioned` (several captions per image)."""
    x, caps = _pixels(model, captioned.items, captioned.report)
    texts = [c for cs in caps for c in cs]
    owner = torch.tensor([i for i, cs in enumerate(caps) for _ in cs])
    t = encode_texts(model, model.tokenizer, texts)
    res = recall_at_k(x, t, owner)
    return {**{k: round(v, 4) for k, v in res.items()}, "images": len(caps), "texts": len(texts)}


@torch.no_grad()
def sam_files(model, images, report: DataReport, max_objects: int | None = None) -> dict:
    """mIoU on COCO instances at their original size: one point at each object's centre (3 masks, the
    one SAM rates best; and the oracle), the single mask for the same point, and the object's box."""
    from mmfm.data.coco import coco_masks
    from mmfm.models.sam.predictor import SamPredictor
    from mmfm.vision.masks import masks_to_boxes

    pred, cache = SamPredictor(model), ImageCache(report)
    rows = {"best3": [], "oracle": [], "single": [], "box": []}
    for im in images:
        pic = cache.load(im.path)
        if pic is None or pic.size != (im.width, im.height):
            continue
        pred.set_image(np.asarray(pic))
        gt = torch.from_numpy(coco_masks(im))
        boxes = masks_to_boxes(gt).float()
        for g, box in zip(gt, boxes):
            pt = np.array([center_point(g)])
            m3, s3, _ = pred.predict(point_coords=pt, point_labels=np.array([1]), multimask_output=True)
            ious = mask_ious(torch.from_numpy(m3), g[None].expand(len(m3), -1, -1))
            rows["best3"].append(float(ious[int(np.argmax(s3))]))
            rows["oracle"].append(float(ious.max()))
            m1, _, _ = pred.predict(point_coords=pt, point_labels=np.array([1]), multimask_output=False)
            rows["single"].append(float(mask_ious(torch.from_numpy(m1), g[None])[0]))
            mb, _, _ = pred.predict(box=box.numpy(), multimask_output=False)
            rows["box"].append(float(mask_ious(torch.from_numpy(mb), g[None])[0]))
            if max_objects and len(rows["box"]) >= max_objects:
                break
        if max_objects and len(rows["box"]) >= max_objects:
            break
    if not rows["box"]:
        raise DataError(f"{report.source}: no object could be evaluated")
    return {"objects": len(rows["box"]), **{f"miou_{k}": round(float(np.mean(v)), 4) for k, v in rows.items()}}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


@torch.no_grad()
def llava_files(model, records, report: DataReport, max_new_tokens: int = 64, batch: int = 8,
                max_len: int = 512) -> dict:
    """Each record's last answer: generated from the turns before it and compared with the reference
    (exact match after lower-casing and dropping punctuation), and the loss of the reference answer
    given the prompt (teacher forcing, the same loss as training). Returns the scores and the answers."""
    from mmfm.data.instructions import collate

    enc, cache = model.conversation(), ImageCache(report)
    examples, losses, tokens = [], 0.0, 0
    usable = []
    for rec in records:
        img = cache.load(rec.image)
        if img is not None:
            usable.append((rec, img))
    for start in range(0, len(usable), batch):
        chunk = usable[start : start + batch]
        prompts = [rec.messages[:-1] for rec, _ in chunk]
        answers = model.generate(prompts, [[img] for _, img in chunk], max_new_tokens=max_new_tokens)
        exs = [enc.example(rec.messages, "chat", max_len) for rec, _ in chunk]
        b = collate([e.input_ids for e in exs], [last_answer_only(e.labels) for e in exs],
                    torch.stack([model.preprocess(img) for _, img in chunk]))
        out = model(b["input_ids"], b["pixels"], labels=b["labels"])
        losses += float(out.loss) * int(out.num_tokens)
        tokens += int(out.num_tokens)
        for (rec, _), ans in zip(chunk, answers):
            ref = rec.messages[-1]["content"]
            examples.append({"id": rec.id, "question": rec.messages[-2]["content"], "reference": ref, "answer": ans,
                             "exact": normalize_answer(ans) == normalize_answer(ref)})
    if not examples:
        raise DataError(f"{report.source}: no record could be evaluated")
    return {"records": len(examples), "exact_match": round(float(np.mean([e["exact"] for e in examples])), 4),
            "answer_loss": round(losses / max(tokens, 1), 4), "examples": examples}


@torch.no_grad()
def molmo2_files(model, records, report: DataReport, max_new_tokens: int = 128, max_frames: int | None = None) -> dict:
    """Every question of every record (mmfm.data.molmo2_files.MediaRecord) asked about its video or
    images, the answer compared with the reference (exact match after SQuAD's normalisation), by kind
    (pointing answers apart)."""
    from mmfm.data.molmo2_files import answer_kind
    from mmfm.errors import InvalidImage
    from mmfm.vision.video import read_video

    examples = []
    for rec in records:
        try:
            media = ({"video": read_video(rec.paths[0], max_frames=max_frames or model.config.max_frames,
                                          max_fps=model.config.max_fps)} if rec.video else {"images": rec.paths})
        except InvalidImage as e:
            report.skip(f"unreadable video ({str(e)[-60:]})", rec.id)
            continue
        for q, ref in rec.turns:
            ans = model.ask(q, max_new_tokens=max_new_tokens, **media)
            examples.append({"id": rec.id, "question": q, "reference": ref, "answer": ans, "kind": answer_kind(ref),
                             "exact": normalize_answer(ans) == normalize_answer(ref)})
    if not examples:
        raise DataError(f"{report.source}: no record could be evaluated")
    by_kind = {k: round(float(np.mean([e["exact"] for e in examples if e["kind"] == k])), 4)
               for k in sorted({e["kind"] for e in examples})}
    return {"records": len(records), "questions": len(examples),
            "exact_match": round(float(np.mean([e["exact"] for e in examples])), 4), "by_kind": by_kind,
            "examples": examples}


def last_answer_only(labels: list[int]) -> list[int]:
    """Labels with every supervised span but the last set to IGNORE."""
    from mmfm.text.conversation import IGNORE

    out = list(labels)
    end = max(i for i, t in enumerate(out) if t != IGNORE)
    start = end
    while start > 0 and out[start - 1] != IGNORE:
        start -= 1
    return [IGNORE] * start + out[start:]


__all__ = ["zeroshot_files", "linear_probe_files", "retrieval_files", "sam_files", "llava_files", "molmo2_files",
           "normalize_answer"]
