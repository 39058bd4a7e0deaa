"""Training SAM on the Shapes world, with the paper's interactive simulation.

Each step encodes a batch of scenes once and decodes K objects per scene over several rounds:
round 1 prompts with a foreground point (ambiguous: 3 masks, the lowest-loss one is trained) or a
noisy box (10% of the side, capped); each later round adds a point sampled uniformly from the error
region of the previous prediction (foreground where it missed, background where it spilled) and
feeds the previous low-res logits back as the mask prompt. Loss per round: 20 * focal + dice on the
masks, plus the MSE of the IoU head against the masks' true IoU. The paper runs 11 rounds (8 with
points, 2 with the mask alone); `rounds` and `mask_only_rounds` set that here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmfm.data.coco import first_prompts
from mmfm.eval.sam_world import evaluate_sam_world
from mmfm.models.sam.config import sam_config
from mmfm.models.sam.model import SAM
from mmfm.train.trainer import Trainer, split_preset
from mmfm.vision.masks import mask_ious
from mmfm.world import World
from mmfm.world.concepts import concept_scene
from mmfm.world.levels import mask_levels
from mmfm.world.scene import mask_stats, render
from mmfm.world.vocab import CONCEPT_NAMES

PRESETS = {
    "world-tiny": dict(
        model="world-tiny",
        train=dict(steps=1200, batch_size=32, lr=1e-3, weight_decay=0.05, warmup=60, min_lr=1e-5, betas=(0.9, 0.999),
                   log_every=20),
        scenes=6000, objects_per_image=2, rounds=3, mask_only_rounds=0, box_fraction=0.5,
    ),
    # world-tiny plus composite-concept scenes whose every part and whole is a target mask: a point on
    # the snowman's head is then truly ambiguous (head or snowman), which is what the 3 outputs are for
    "world-tiny-parts": dict(
        model="world-tiny",
        train=dict(steps=1200, batch_size=32, lr=1e-3, weight_decay=0.05, warmup=60, min_lr=1e-5, betas=(0.9, 0.999),
                   log_every=20),
        scenes=6000, objects_per_image=2, rounds=3, mask_only_rounds=0, box_fraction=0.5, concept_fraction=0.25,
        others_weight=0.05,
    ),
}
# the paper's ablation: one output for every prompt, one point included (an ambiguity-unaware SAM)
PRESETS["world-tiny-parts-single"] = {**PRESETS["world-tiny-parts"], "others_weight": 0.0, "single_output": True}


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss averaged over pixels: (..., H, W) -> (...)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - pt) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = logits.sigmoid().flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def sample_pixels(mask: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """One uniformly drawn (x, y) pixel per row of (N, H, W) bool; rows with an empty mask draw from
    `fallback` (and from the whole image if that is empty too)."""
    n, h, w = mask.shape
    m = mask.flatten(1)
    m = torch.where(m.any(1, keepdim=True), m, fallback.flatten(1))
    weights = m.float() + (~m.any(1, keepdim=True)).float()
    idx = torch.multinomial(weights, 1).squeeze(1)
    return torch.stack([idx % w, idx // w], 1).float()


@dataclass
class WorldSAMData:
    images: torch.Tensor  # (N, S, S, 3) uint8
    masks: torch.Tensor  # (M, S, S) bool, visible part of every usable object
    boxes: torch.Tensor  # (M, 4) XYXY inclusive
    first: torch.Tensor  # (N,) index of the scene's first object in `masks`
    count: torch.Tensor  # (N,) objects of the scene
    batch_size: int
    k: int
    box_fraction: float
    seed: int = 0

    @classmethod
    def build(cls, n: int, size: int, batch_size: int, k: int, box_fraction: float, seed: int = 0,
              split: str = "train", min_area: int = 12, progress: bool = True,
              concept_fraction: float = 0.0) -> WorldSAMData:
        """`concept_fraction` of the scenes hold one composite concept instead, with every part and the
        whole as objects (mmfm.world.levels); drawn from their own random stream, not the `concepts`
        split the evaluation uses."""
        from tqdm.auto import tqdm

        world = World(seed=seed, size=size)
        pick = np.random.default_rng([seed, 98]).random(n) < concept_fraction
        images, masks, boxes, first, count = [], [], [], [], []
        total = 0
        for i in tqdm(range(n), desc=f"world {split} scenes", disable=not progress, dynamic_ncols=True):
            if pick[i]:
                scene = concept_scene(np.random.default_rng([seed, 99, i]), CONCEPT_NAMES[i % len(CONCEPT_NAMES)])
                r = render(scene, size)
                levels = np.stack(mask_levels(r, min_area))
                images.append(r.image)
                masks.append(levels)
                boxes.append(mask_stats(levels)[0])
                first.append(total)
                count.append(len(levels))
                total += len(levels)
                continue
            r = render(world.scene(split, i), size)
            keep = r.areas >= min_area
            if not keep.any():
                continue
            images.append(r.image)
            masks.append(r.masks[keep])
            boxes.append(r.boxes[keep])
            first.append(total)
            count.append(int(keep.sum()))
            total += int(keep.sum())
        return cls(torch.from_numpy(np.stack(images)), torch.from_numpy(np.concatenate(masks)),
                   torch.from_numpy(np.concatenate(boxes)).float(), torch.tensor(first), torch.tensor(count),
                   batch_size, k, box_fraction, seed)

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1, accum: int = 1) -> dict:
        rng = np.random.default_rng([self.seed, step])
        n = self.images.shape[0]
        scenes = torch.from_numpy(rng.choice(n, self.batch_size, replace=False))
        local = self.batch_size // (world * accum)
        part = slice((rank * accum + micro) * local, (rank * accum + micro + 1) * local)
        scenes = scenes[part]
        r = torch.from_numpy(rng.random((self.batch_size, self.k))).float()[part]
        objs = self.first[scenes, None] + (r * self.count[scenes, None]).long()  # (b, k)
        objs = objs.flatten()
        gt = self.masks[objs]
        # the first prompt, drawn here so that a resumed run sees the same data
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return {"images": self.images[scenes], "gt": gt, "k": self.k,
                **first_prompts(gt, self.boxes[objs], g, self.box_fraction)}


class SAMTrainModule(nn.Module):
    """forward(batch) -> (loss, metrics); `.model` is the SAM that gets saved."""

    def __init__(self, model: SAM, rounds: int = 3, mask_only_rounds: int = 0, others_weight: float = 0.0,
                 single_output: bool = False):
        """others_weight: with an ambiguous prompt the paper trains only the best of the 3 masks; on small
        data one output then wins every prompt and the other two never learn (measured: their predicted
        IoU stays at 0.05). A small weight on the others' losses keeps them alive (a relaxed
        winner-takes-all, Rupprecht et al. 2017); 0 is the paper. single_output: the ablation, one mask
        for every prompt."""
        super().__init__()
        self.model = model
        self.rounds = rounds
        self.mask_only_rounds = mask_only_rounds
        self.others_weight = others_weight
        self.single_output = single_output

    def forward(self, batch: dict):
        m = self.model
        if "pixels" in batch:  # a user's images, already resized, normalised and padded
            x = batch["pixels"]
        else:
            x = m.preprocess(batch["images"].permute(0, 3, 1, 2).float())
        emb = m.encode_image(x).repeat_interleave(batch["k"], 0)
        gt = batch["gt"]
        total, metrics, n_all = 0.0, {}, gt.shape[0]
        for use_box in (False, True):
            rows = (batch["use_box"] == use_box).nonzero().flatten()
            if len(rows) == 0:
                continue
            loss, met = self._interactive(
                emb[rows], gt[rows], batch["point"][rows], batch["box"][rows] if use_box else None
            )
            total = total + loss * len(rows) / n_all
            for key, v in met.items():
                metrics[f"{'box' if use_box else 'point'}_{key}"] = v
        return total, metrics

    def _interactive(self, emb, gt, point, box):
        m = self.model
        n = gt.shape[0]
        side = m.prompt_encoder.mask_input_size
        target = gt.float()
        if target.shape[-2:] != side:
            target = F.interpolate(target[:, None], side, mode="bilinear", align_corners=False)[:, 0]
        gt_low = target > 0.5
        coords = point[:, None] if box is None else point.new_zeros(n, 0, 2)
        labels = torch.ones(n, coords.shape[1], dtype=torch.int, device=gt.device)
        mask_in, total, met = None, 0.0, {}
        # rounds with a new point, then (the paper's) rounds with only the previous mask
        plan = ["point"] * self.rounds + ["mask"] * self.mask_only_rounds
        for r in range(len(plan)):
            multimask = r == 0 and box is None and not self.single_output  # one point is ambiguous: best of 3
            points = (coords, labels) if coords.shape[1] else None
            low, iou = m.decode(emb, points=points, boxes=box, mask_input=mask_in, multimask_output=multimask)
            per_mask = 20 * focal_loss(low, target[:, None].expand_as(low)) + dice_loss(
                low, target[:, None].expand_as(low)
            )
            with torch.no_grad():
                true_iou = mask_ious(low > 0, gt_low[:, None].expand_as(low))
            best = per_mask.argmin(1) if multimask else torch.zeros(n, dtype=torch.long, device=low.device)
            best_loss = per_mask.gather(1, best[:, None])[:, 0]  # (n,)
            seg = best_loss.mean()
            if multimask and self.others_weight:
                seg = seg + self.others_weight * (per_mask.sum(1) - best_loss).mean()
            total = total + seg + F.mse_loss(iou.float(), true_iou)
            if r == 0:
                met["iou_round1"] = true_iou.gather(1, best[:, None]).mean().detach()
            chosen = iou.argmax(1) if multimask else best  # what inference would feed back
            prev = low[torch.arange(n), chosen].detach()
            met["iou_last"] = mask_ious(prev > 0, gt_low).mean()
            if r + 1 < len(plan) and plan[r + 1] == "point":
                pred = prev > 0
                fn, fp = gt_low & ~pred, pred & ~gt_low
                xy = sample_pixels(fn | fp, gt_low)
                scale = torch.tensor([m.image_size / side[1], m.image_size / side[0]], device=xy.device)
                xi, yi = xy[:, 0].long(), xy[:, 1].long()
                lab = fn[torch.arange(n), yi, xi].int()
                coords = torch.cat([coords, (xy * scale)[:, None]], 1)
                labels = torch.cat([labels, lab[:, None]], 1)
            mask_in = prev[:, None]
        return total / len(plan), met


def preset(name: str):
    model, train, extra = split_preset(PRESETS, name, "SAM")
    return sam_config(model), train, extra


def train_world_sam(preset_name: str = "world-tiny", out="runs/sam", resume: bool = False, progress: bool = True,
                    scenes: int | None = None, evaluate: bool = True, eval_n: int = 300, rounds: int | None = None,
                    **overrides) -> dict:
    """Train SAM on the world (overrides: steps, batch_size, lr, seed, precision, ...), save `out/model`,
    write `out/report.json` with the world evaluation."""
    config, tcfg, extra = preset(preset_name)
    tcfg.update(**overrides)
    if rounds is not None:
        extra["rounds"] = rounds
    tcfg.progress = progress
    out = Path(out)
    t0 = time.perf_counter()
    data = WorldSAMData.build(scenes or extra["scenes"], config.image_size, tcfg.batch_size, extra["objects_per_image"],
                              extra["box_fraction"], seed=tcfg.seed, progress=progress,
                              concept_fraction=extra.get("concept_fraction", 0.0))
    torch.manual_seed(tcfg.seed)
    model = SAM(config)
    module = SAMTrainModule(model, extra["rounds"], extra["mask_only_rounds"], extra.get("others_weight", 0.0),
                            extra.get("single_output", False))
    trainer = Trainer(module, tcfg, lambda s, mi, r, w: data.batch(s, mi, r, w, tcfg.accum), out)
    trainer.train(resume=resume)
    report = {"preset": preset_name, "rounds": extra["rounds"], "train_seconds": round(time.perf_counter() - t0, 1),
              "train_config": {k: getattr(tcfg, k) for k in ("steps", "batch_size", "lr", "seed")}}
    if trainer.rank == 0:
        model.save_pretrained(out / "model")
        if evaluate:
            report["eval"] = evaluate_sam_world(model.eval(), n=eval_n, seed=tcfg.seed)
            report["total_seconds"] = round(time.perf_counter() - t0, 1)
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
