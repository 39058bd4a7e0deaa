"""SAM on held-out world scenes (the `test` split, never trained on):

- one point at the object's centre (the pixel farthest from its boundary), 3 masks: the one SAM
  rates best (predicted IoU) and the oracle best; and the single-mask output for the same point;
- the object's box, single mask;
- the same on the subset of objects that overlap another object (where one point is ambiguous);
- automatic masks (reference defaults) and the recall of ground-truth objects at IoU 0.5 / 0.75;
- `ambiguity_world`: points that mean a part or a whole (composite concepts, mmfm.world.levels).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mmfm.models.sam.amg import SamAutomaticMaskGenerator
from mmfm.models.sam.text import segment
from mmfm.vision.masks import mask_ious
from mmfm.world import World
from mmfm.world.levels import levels_at, mask_levels
from mmfm.world.scene import render


def center_point(mask: torch.Tensor) -> tuple[float, float]:
    """(x, y) of the pixel deepest inside `mask` (H, W) bool: erode until one more step would empty
    it, then take the survivor closest to the centroid."""
    m = mask.float()[None, None]
    prev = m
    while m.sum() > 0:
        prev = m
        m = -F.max_pool2d(-m, 3, stride=1, padding=1)  # erosion (outside the image counts as background)
        m = m * F.pad(torch.ones(1, 1, mask.shape[0] - 2, mask.shape[1] - 2), (1, 1, 1, 1))
    ys, xs = prev[0, 0].nonzero(as_tuple=True)
    cy, cx = mask.nonzero().float().mean(0)
    j = int(((ys.float() - cy) ** 2 + (xs.float() - cx) ** 2).argmin())
    return float(xs[j]), float(ys[j])


@torch.inference_mode()
def evaluate_sam_world(model, n: int = 300, seed: int = 0, split: str = "test", amg_images: int = 20,
                       min_area: int = 12, batch: int = 32) -> dict:
    size = model.image_size
    world = World(seed=seed, size=size)
    scenes = [render(world.scene(split, i), size) for i in range(n)]
    rows = {"best3": [], "oracle": [], "single": [], "box": []}
    overlap = []
    for start in range(0, n, batch):
        chunk = scenes[start : start + batch]
        x = torch.from_numpy(np.stack([r.image for r in chunk])).permute(0, 3, 1, 2).float()
        emb = model.encode_image(model.preprocess(x))
        for j, r in enumerate(chunk):
            keep = np.flatnonzero(r.areas >= min_area)
            if len(keep) == 0:
                continue
            gt = torch.from_numpy(r.masks[keep])
            pts = torch.tensor([center_point(g) for g in gt])[:, None]
            labels = torch.ones(len(keep), 1, dtype=torch.int)
            e = emb[j : j + 1]
            post = lambda low: model.postprocess_masks(low, (size, size), (size, size)) > model.mask_threshold  # noqa: E731
            low3, iou3 = model.decode(e, points=(pts, labels), multimask_output=True)
            ious3 = mask_ious(post(low3), gt[:, None].expand(-1, low3.shape[1], -1, -1))
            rows["best3"] += ious3.gather(1, iou3.argmax(1, keepdim=True))[:, 0].tolist()
            rows["oracle"] += ious3.max(1).values.tolist()
            low1, _ = model.decode(e, points=(pts, labels), multimask_output=False)
            rows["single"] += mask_ious(post(low1)[:, 0], gt).tolist()
            lowb, _ = model.decode(e, boxes=torch.from_numpy(r.boxes[keep]).float(), multimask_output=False)
            rows["box"] += mask_ious(post(lowb)[:, 0], gt).tolist()
            full = torch.from_numpy(r.full_masks)
            inter = (full[:, None] & full[None]).flatten(2).any(-1)
            inter.fill_diagonal_(False)
            overlap += inter.any(1)[torch.from_numpy(keep)].tolist()
    ov = np.array(overlap, dtype=bool)
    res = {"objects": len(ov), "overlapping_objects": int(ov.sum())}
    for k, v in rows.items():
        v = np.array(v)
        res[f"miou_{k}"] = round(float(v.mean()), 4)
        res[f"miou_{k}_overlapping"] = round(float(v[ov].mean()), 4) if ov.any() else None
    if amg_images:
        res.update(amg_recall(model, scenes[:amg_images], min_area))
    return res


def amg_recall(model, scenes, min_area: int = 12, **amg_kwargs) -> dict:
    gen = SamAutomaticMaskGenerator(model, **amg_kwargs)
    hits5 = hits75 = total = masks = 0
    for r in scenes:
        recs = gen.generate(r.image)
        masks += len(recs)
        gt = torch.from_numpy(r.masks[r.areas >= min_area])
        total += len(gt)
        if not recs or not len(gt):
            continue
        pred = torch.from_numpy(np.stack([rec["segmentation"] for rec in recs]))
        best = mask_ious(gt[:, None], pred[None]).max(1).values
        hits5 += int((best >= 0.5).sum())
        hits75 += int((best >= 0.75).sum())
    return {"amg_images": len(scenes), "amg_masks_per_image": round(masks / max(1, len(scenes)), 2),
            "amg_recall@0.5": round(hits5 / max(1, total), 4), "amg_recall@0.75": round(hits75 / max(1, total), 4)}


@torch.inference_mode()
def text_prompt_world(sam, clip, n: int = 50, seed: int = 0, split: str = "test", min_area: int = 40) -> dict:
    """Text prompts on held-out scenes: for one object per scene (one whose color x shape is unique in
    the scene), segment '<color> <shape>' and score the mask against that object: mIoU and the share
    of scenes where the right object was picked (IoU >= 0.5)."""
    world = World(seed=seed, size=sam.image_size)
    ious = []
    for i in range(n):
        r = render(world.scene(split, i), sam.image_size)
        names = [f"{o.color} {o.shape}" for o in r.scene.objects]
        ok = [j for j, nm in enumerate(names) if names.count(nm) == 1 and r.areas[j] >= min_area]
        if not ok:
            continue
        j = ok[i % len(ok)]
        try:
            res = segment(sam, r.image, names[j], clip=clip)
            iou = float(mask_ious(torch.from_numpy(res["mask"]), torch.from_numpy(r.masks[j])))
        except Exception:  # noqa: BLE001 - no candidate region counts as a miss
            iou = 0.0
        ious.append(iou)
    v = np.array(ious)
    return {"text_scenes": len(v), "text_miou": round(float(v.mean()), 4) if len(v) else None,
            "text_hit@0.5": round(float((v >= 0.5).mean()), 4) if len(v) else None}


@torch.inference_mode()
def ambiguity_world(model, n: int = 140, seed: int = 0, min_area: int = 12, examples: int = 0) -> dict:
    """SAM's ambiguity claim on held-out composite-concept scenes (the world's `concepts` split, never
    trained on), where one point may mean a part or the whole (mmfm.world.levels). Two protocols:

    - `valid`: a point at the centre of each visible part; a prediction scores its IoU with the nearest
      of the point's valid masks ("a valid mask", the paper's requirement for an ambiguous prompt);
    - `intended`: SAM's evaluation protocol, one ground-truth mask at a time (every part and the whole),
      the point at its centre, IoU with that mask; a point inside 2+ valid masks cannot say which one
      was meant, which is what 3 outputs are for.

    Points inside one valid mask only, and isolated objects of ordinary `test` scenes, are the
    `unambiguous` reference. Compared: the single-mask output, the best of 3 by predicted IoU, the
    oracle of 3. `covered`: the share of an ambiguous point's valid masks that one of the 3 outputs
    matches at IoU >= 0.75. Returns means, the per-point lists (`per_point`, for intervals) and, with
    `examples` > 0, that many ambiguous cases to draw."""
    size = model.image_size
    world = World(seed=seed, size=size)
    post = lambda low: model.postprocess_masks(low, (size, size), (size, size)) > model.mask_threshold  # noqa: E731
    per: dict[str, dict[str, list]] = {k: {"single": [], "best3": [], "oracle3": [], "covered": []}
                                       for k in ("valid", "intended", "unambiguous")}
    shown: list[dict] = []

    def decode(r, pts):
        x = torch.from_numpy(r.image).permute(2, 0, 1)[None].float()
        e = model.encode_image(model.preprocess(x))
        coords, labels = torch.tensor(pts)[:, None], torch.ones(len(pts), 1, dtype=torch.int)
        low3, iou3 = model.decode(e, points=(coords, labels), multimask_output=True)
        low1, _ = model.decode(e, points=(coords, labels), multimask_output=False)
        return post(low3), iou3, post(low1)[:, 0]

    def score(kind, m3, iou3, m1, valid, scored):
        """valid: (L, H, W) masks the point may mean; scored: (K, H, W) the ones a prediction is scored on."""
        near3 = mask_ious(m3[:, None], scored[None]).max(1).values  # (3,)
        per[kind]["best3"].append(float(near3[iou3.argmax()]))
        per[kind]["oracle3"].append(float(near3.max()))
        per[kind]["single"].append(float(mask_ious(m1[None], scored).max()))
        per[kind]["covered"].append(float((mask_ious(m3[:, None], valid[None]).max(0).values >= 0.75).float().mean()))

    for i in range(n):
        r = render(world.scene("concepts", i), size)
        levels = mask_levels(r, min_area)
        parts = [j for j in range(len(r.masks)) if r.areas[j] >= min_area]
        pts = [center_point(torch.from_numpy(r.masks[j])) for j in parts]
        pts += [center_point(torch.from_numpy(lv)) for lv in levels]
        m3, iou3, m1 = decode(r, pts)
        for p, (px, py) in enumerate(pts):
            valid = torch.from_numpy(np.stack([levels[k] for k in levels_at(levels, px, py)]))
            if p < len(parts):  # a part's centre, scored on the nearest valid mask
                kind, scored = ("valid", valid) if len(valid) >= 2 else ("unambiguous", valid)
            else:  # a ground-truth mask's centre, scored on that mask
                kind, scored = ("intended", torch.from_numpy(levels[p - len(parts)])[None])
                if len(valid) < 2:
                    continue  # already counted as an unambiguous part
            score(kind, m3[p], iou3[p], m1[p], valid, scored)
            if kind == "valid" and len(shown) < examples and p == 0:
                shown.append({"image": r.image, "point": (px, py), "levels": valid.numpy(), "outputs": m3[p].numpy(),
                              "predicted_iou": iou3[p].tolist(), "single": m1[p].numpy()})
    for i in range(n):  # isolated objects of ordinary scenes: one valid mask
        r = render(world.scene("test", i), size)
        full = r.full_masks
        alone = [j for j in range(len(full)) if r.areas[j] >= min_area
                 and not (full[j] & np.delete(full, j, 0).any(0)).any()]
        if not alone:
            continue
        m3, iou3, m1 = decode(r, [center_point(torch.from_numpy(r.masks[j])) for j in alone])
        for p, j in enumerate(alone):
            gt = torch.from_numpy(r.masks[j])[None]
            score("unambiguous", m3[p], iou3[p], m1[p], gt, gt)
    res: dict = {"scenes": n}
    for kind, d in per.items():
        res[f"{kind}_points"] = len(d["single"])
        for k in ("single", "best3", "oracle3"):
            res[f"miou_{k}_{kind}"] = round(float(np.mean(d[k])), 4) if d[k] else None
    res["valid_masks_covered"] = round(float(np.mean(per["valid"]["covered"])), 4) if per["valid"]["covered"] else None
    res["per_point"] = per
    if examples:
        res["examples"] = shown
    return res
