"""Training CLIP on the Shapes world: the data cache, the loss module, and the `world-tiny` recipe.

Data: a fixed cache of training scenes (rendered once, uint8) with every caption pre-tokenized; the
batch of step s is a seeded permutation slice, and each image gets one of its captions drawn from a
generator seeded by (seed, step): so batches are a pure function of the step (exact resume), and
successive epochs see each scene with captions of varied granularity ("a red circle", "a red shape",
"two circles", "a red circle to the left of a blue star", the full listing), which is what lets
held-out color x shape compositions be named from their parts."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmfm.eval.clip_world import linear_probe_world, retrieval_world, zeroshot_world
from mmfm.models.clip import CLIP, CLIPConfig
from mmfm.nn.losses import clip_loss
from mmfm.text.tokenizer import CLIPTokenizer
from mmfm.train.trainer import TrainConfig, Trainer, run_folder, split_preset
from mmfm.world import World
from mmfm.world.vocab import SHAPES


def world_towers(stem: str = "conv") -> tuple[dict, dict]:
    """The world-tiny image and text towers (CLIP's and CoCa's), as config dicts. The image tower is a
    hybrid ViT (a 3-stage CNN makes the 8x8 tokens): the plain ViT (`stem="patch"`) learns color at once
    but shape too slowly for a 2-core, 10-minute budget."""
    tok = CLIPTokenizer.world()
    vision = dict(image_size=64, patch_size=8, width=96, layers=4, heads=3, stem=stem)
    text = dict(vocab_size=tok.vocab_size, context_length=24, width=96, layers=2, heads=3,
                sot_token_id=tok.sot_token_id, eot_token_id=tok.eot_token_id, pad_token_id=0)
    return vision, text


def world_tiny_config(stem: str = "conv", pool: str = "attn") -> CLIPConfig:
    """The world-tiny CLIP. Its image embedding is pooled by one learned attention query (open_clip's
    attentional pooler) by default, which at this budget beats the class token (bench/RESULTS.md)."""
    vision, text = world_towers(stem)
    return CLIPConfig(embed_dim=128, vision={**vision, "pool": pool, "attn_pool_heads": 4}, text=text,
                      tokenizer="world")


# The world-tiny schedule and data, shared by CLIP and CoCa so that their zero-shot numbers compare.
WORLD_TINY_TRAIN = dict(steps=800, batch_size=256, lr=1.5e-3, weight_decay=0.1, warmup=80, min_lr=1e-5)
WORLD_TINY_DATA = dict(scenes=24_000, max_objects=4)

PRESETS = {
    "world-tiny": dict(model=world_tiny_config, train=WORLD_TINY_TRAIN, **WORLD_TINY_DATA),
    "world-tiny-cls": dict(  # CLIP's class-token pooling: exports to transformers / open_clip
        model=lambda: world_tiny_config(pool="cls"), train=WORLD_TINY_TRAIN, **WORLD_TINY_DATA,
    ),
    "world-tiny-vit": dict(  # the plain-ViT tower with the class token: exports to transformers / open_clip
        model=lambda: world_tiny_config(stem="patch", pool="cls"),
        train={**WORLD_TINY_TRAIN, "steps": 1000, "warmup": 100}, **WORLD_TINY_DATA,
    ),
}


# How often each kind of caption is drawn. Generic ones ("two shapes", "a circle") repeat across a batch
# and act as false negatives for each other, so they are drawn less than the specific ones.
CAPTION_WEIGHTS = {"listing": 0.35, "object": 0.18, "attribute": 0.08, "total": 0.02, "relation": 0.12}


@dataclass
class WorldCLIPData:
    images: torch.Tensor  # (N, 3, S, S) uint8
    captions: torch.Tensor  # (N, K, T) token ids, K captions per scene (padded with weight 0)
    weights: torch.Tensor  # (N, K) cumulative drawing probabilities of each scene's captions
    mean: torch.Tensor
    std: torch.Tensor
    batch_size: int
    seed: int = 0
    negatives: torch.Tensor | None = None  # (N, T): per scene, one of its objects with the shape changed

    @classmethod
    def build(cls, config: CLIPConfig, n: int, batch_size: int, seed: int = 0, max_objects: int = 4,
              split: str = "train", progress: bool = True, hard_negatives: bool = False) -> WorldCLIPData:
        from tqdm.auto import tqdm


        world = World(seed=seed, size=config.vision.image_size, max_objects=max_objects)
        tok = CLIPTokenizer.world(context_length=config.text.context_length)
        images = torch.empty(n, 3, world.size, world.size, dtype=torch.uint8)
        caps, negs = [], []
        for i in tqdm(range(n), desc=f"world {split} scenes", disable=not progress, dynamic_ncols=True):
            r, c = world.captioned(split, i)
            images[i] = torch.from_numpy(r.image).permute(2, 0, 1)
            caps.append(c)
            if hard_negatives:
                negs.append(shape_negative(r, world.pairs(split), np.random.default_rng([seed, i, 7])))
        k = max(len(c) for c in caps)
        flat = [c[j % len(c)].text for c in caps for j in range(k)]
        ids = tok(flat).view(n, k, -1)
        w = torch.tensor([[CAPTION_WEIGHTS[c[j].kind] if j < len(c) else 0.0 for j in range(k)] for c in caps])
        w = (w / w.sum(1, keepdim=True)).cumsum(1)
        w[:, -1] = 1.0
        mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(config.image_std).view(1, 3, 1, 1)
        neg_ids = tok(negs) if hard_negatives else None
        return cls(images, ids, w, mean, std, batch_size, seed, neg_ids)

    def pixels(self, idx: torch.Tensor) -> torch.Tensor:
        return (self.images[idx].float() / 255.0 - self.mean) / self.std

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1, accum: int = 1) -> dict:
        n = self.images.shape[0]
        per_epoch = n // self.batch_size
        epoch, k = divmod(step, per_epoch)
        perm = torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(n))
        idx = perm[k * self.batch_size : (k + 1) * self.batch_size]
        # captions are drawn for the whole global batch, then sliced: every rank split sees the same data
        u = torch.from_numpy(np.random.default_rng([self.seed, step, 1]).random(len(idx))).float()
        which = torch.searchsorted(self.weights[idx], u[:, None]).squeeze(1).clamp(max=self.weights.shape[1] - 1)
        local = self.batch_size // (world * accum)
        part = slice((rank * accum + micro) * local, (rank * accum + micro + 1) * local)
        idx, which = idx[part], which[part]
        out = {"pixels": self.pixels(idx), "input_ids": self.captions[idx, which]}
        if self.negatives is not None:
            out["negative_ids"] = self.negatives[idx]
        return out


def shape_negative(r, allowed_pairs, rng) -> str:
    """'a <color> <shape>' that is false of the scene: one of its objects with another shape. Only
    compositions of the training split are used, so held-out pairs never appear in training text."""
    objs = [o for o, a in zip(r.scene.objects, r.areas) if a > 0] or list(r.scene.objects)
    present = {(o.color, o.shape) for o in objs}
    allowed = set(map(tuple, allowed_pairs))
    o = objs[rng.integers(len(objs))]
    options = [s for s in SHAPES if s != o.shape and (o.color, s) in allowed and (o.color, s) not in present]
    if not options:
        return "an empty background"
    shape = options[rng.integers(len(options))]
    return f"{'an' if o.color[0] in 'aeiou' else 'a'} {o.color} {shape}"


class CLIPTrainModule(nn.Module):
    """forward(batch) -> (contrastive loss, metrics); `.model` is the CLIP that gets saved."""

    def __init__(self, model: CLIP):
        super().__init__()
        self.model = model

    def forward(self, batch: dict):
        img = F.normalize(self.model.encode_image(batch["pixels"]), dim=-1)
        txt = F.normalize(self.model.encode_text(batch["input_ids"]), dim=-1)
        neg = None
        if "negative_ids" in batch:  # NegCLIP-style hard negatives: extra texts for the image -> text side
            neg = F.normalize(self.model.encode_text(batch["negative_ids"]), dim=-1).float()
        scale = self.model.scale()
        loss = clip_loss(img.float(), txt.float(), scale, negatives=neg)
        return loss, {"logit_scale": scale.detach()}


def preset(name: str) -> tuple[CLIPConfig, TrainConfig, dict]:
    model, train, extra = split_preset(PRESETS, name, "CLIP")
    return model(), train, extra


def train_world_clip(preset_name: str = "world-tiny", out="runs/clip", resume: bool = False, progress: bool = True,
                     scenes: int | None = None, evaluate: bool = True, eval_n: int = 1000, on_step=None,
                     **overrides) -> dict:
    """Train a CLIP on the Shapes world with a preset (overrides: any TrainConfig field: steps, batch_size,
    lr, seed, precision, save_every, ...; on_step(step) runs after each step), save it to `out/model` (mmfm
    format, with its tokenizer), and write `out/report.json` with zero-shot (one template vs the ensemble,
    seen vs held-out compositions), linear-probe and retrieval scores. Runs under torchrun (DDP) as well."""
    config, tcfg, extra = preset(preset_name)

    def evaluate_clip(model, seed: int) -> dict:
        return {"zeroshot": zeroshot_world(model, model.tokenizer, n=eval_n, seed=seed),
                "linear_probe": linear_probe_world(model, n_test=eval_n, seed=seed),
                "retrieval": retrieval_world(model, model.tokenizer, n=min(eval_n, 500), seed=seed)}

    return train_world_contrastive(preset_name, CLIP, CLIPTrainModule, config, tcfg.update(**overrides), extra, out,
                                   resume=resume, progress=progress, scenes=scenes,
                                   evaluate=evaluate_clip if evaluate else None, on_step=on_step)


def train_world_contrastive(preset_name: str, model_cls, module_cls, config, tcfg: TrainConfig, extra: dict, out,
                            resume: bool, progress: bool, scenes: int | None, evaluate=None, on_step=None) -> dict:
    """The world recipe CLIP and CoCa share: the caption cache, the Trainer, then on rank 0 the model saved
    to out/model, `evaluate(model, seed) -> dict` merged into the report, and out/report.json written."""
    tcfg.progress = progress
    out = run_folder(out)  # before the data cache is built
    t0 = time.perf_counter()
    data = WorldCLIPData.build(config, scenes or extra["scenes"], tcfg.batch_size, seed=tcfg.seed,
                               max_objects=extra["max_objects"], progress=progress,
                               hard_negatives=extra.get("hard_negatives", False))
    torch.manual_seed(tcfg.seed)
    model = model_cls(config)
    model.tokenizer = CLIPTokenizer.world(context_length=config.text.context_length)
    trainer = Trainer(module_cls(model), tcfg, lambda s, m, r, w: data.batch(s, m, r, w, tcfg.accum), out,
                      on_step=on_step)
    trainer.train(resume=resume)
    report = {
        "preset": preset_name,
        "train_config": {k: getattr(tcfg, k) for k in ("steps", "batch_size", "lr", "seed")},
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    if trainer.rank == 0:
        model.save_pretrained(out / "model")
        if evaluate is not None:
            report.update(evaluate(model.eval(), tcfg.seed))
            report["total_seconds"] = round(time.perf_counter() - t0, 1)
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
