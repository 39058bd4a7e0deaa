"""Training SimCLR on the Shapes world, at CLIP's budget so that the lecture's comparison is fair: the
same scenes (24,000, up to 4 objects), the same image tower (world-tiny hybrid ViT with attention
pooling), steps and batch; no text. Each step draws a seeded slice of the scenes and two augmented views
of each (mmfm.vision.augment), so a batch is a pure function of the step. Held-out colour x shape
compositions never appear in the scenes the world's training split draws (as for CLIP)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mmfm.eval.probes import probe_world
from mmfm.models.simclr import SimCLR, SimCLRConfig
from mmfm.nn.losses import nt_xent_loss
from mmfm.train.clip import WORLD_TINY_DATA, WORLD_TINY_TRAIN, world_towers
from mmfm.train.trainer import TrainConfig, Trainer, run_folder, split_preset
from mmfm.vision.augment import SimCLRAugment
from mmfm.world import World


def world_tiny_config(stem: str = "conv") -> SimCLRConfig:
    vision, _ = world_towers(stem)
    return SimCLRConfig(vision={**vision, "pool": "attn", "attn_pool_heads": 4}, feature_dim=128, proj_hidden=512,
                        proj_dim=128)


PRESETS = {
    # CLIP's world-tiny schedule and scenes; temperature 0.2 (the paper's best for its batch sizes is 0.1-0.5)
    "world-tiny": dict(model=world_tiny_config, train=WORLD_TINY_TRAIN, **WORLD_TINY_DATA, temperature=0.2,
                       strength=0.5),
}


@dataclass
class WorldSimCLRData:
    images: torch.Tensor  # (N, 3, S, S) uint8
    mean: torch.Tensor
    std: torch.Tensor
    batch_size: int
    augment: SimCLRAugment
    seed: int = 0

    @classmethod
    def build(cls, config: SimCLRConfig, n: int, batch_size: int, augment: SimCLRAugment, seed: int = 0,
              max_objects: int = 4, progress: bool = True) -> WorldSimCLRData:
        from tqdm.auto import tqdm

        world = World(seed=seed, size=config.vision.image_size, max_objects=max_objects)
        images = torch.empty(n, 3, world.size, world.size, dtype=torch.uint8)
        for i in tqdm(range(n), desc="world train scenes", disable=not progress, dynamic_ncols=True):
            images[i] = torch.from_numpy(world.captioned("train", i)[0].image).permute(2, 0, 1)
        return cls(images, torch.tensor(config.image_mean).view(1, 3, 1, 1),
                   torch.tensor(config.image_std).view(1, 3, 1, 1), batch_size, augment, seed)

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1, accum: int = 1) -> dict:
        n = self.images.shape[0]
        per_epoch = n // self.batch_size
        epoch, k = divmod(step, per_epoch)
        perm = torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(n))
        local = self.batch_size // (world * accum)
        start = k * self.batch_size + (rank * accum + micro) * local
        x = self.images[perm[start : start + local]].float() / 255.0
        base = int(np.random.default_rng([self.seed, step, micro, rank]).integers(2**62))
        views = [(self.augment(x, base + v) - self.mean) / self.std for v in (0, 1)]
        return {"view1": views[0], "view2": views[1]}


class SimCLRTrainModule(nn.Module):
    def __init__(self, model: SimCLR, temperature: float):
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, batch: dict):
        z = self.model.project(torch.cat([batch["view1"], batch["view2"]]))  # one pass: BatchNorm sees both views
        z1, z2 = z.chunk(2)
        return nt_xent_loss(z1, z2, self.temperature), {}


def preset(name: str):
    model, train, extra = split_preset(PRESETS, name, "SimCLR")
    return model(), train, extra


def train_world_simclr(preset_name: str = "world-tiny", out="runs/simclr", resume: bool = False, progress: bool = True,
                       scenes: int | None = None, evaluate: bool = True, color_jitter: bool = True,
                       strength: float | None = None, temperature: float | None = None, eval_n: int = 1000,
                       **overrides) -> dict:
    """Train SimCLR on world scenes (overrides: any TrainConfig field), save out/model, write out/report.json
    with the world probes (mmfm.eval.probes). `color_jitter=False`: the paper's ablation."""
    config, tcfg, extra = preset(preset_name)
    tcfg: TrainConfig = tcfg.update(**overrides)
    tcfg.progress = progress
    out = run_folder(out)
    t0 = time.perf_counter()
    aug = SimCLRAugment(config.vision.image_size, strength=strength or extra["strength"], color_jitter=color_jitter)
    data = WorldSimCLRData.build(config, scenes or extra["scenes"], tcfg.batch_size, aug, seed=tcfg.seed,
                                 max_objects=extra["max_objects"], progress=progress)
    torch.manual_seed(tcfg.seed)
    model = SimCLR(config)
    t = temperature or extra["temperature"]
    trainer = Trainer(SimCLRTrainModule(model, t), tcfg, lambda s, m, r, w: data.batch(s, m, r, w, tcfg.accum), out)
    trainer.train(resume=resume)
    report = {"preset": preset_name, "color_jitter": color_jitter, "strength": aug.strength, "temperature": t,
              "train_seconds": round(time.perf_counter() - t0, 1),
              "train_config": {k: getattr(tcfg, k) for k in ("steps", "batch_size", "lr", "seed")}}
    if trainer.rank == 0:
        model.save_pretrained(out / "model")
        if evaluate:
            report["probes"] = probe_world(model.eval(), n_test=eval_n, seed=tcfg.seed)
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


__all__ = ["train_world_simclr", "WorldSimCLRData", "SimCLRTrainModule", "PRESETS", "world_tiny_config"]
