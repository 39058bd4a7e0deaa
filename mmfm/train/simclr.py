"""Training SimCLR on the Shapes world, at CLIP's budget so that the lecture's comparison is fair: the
same scenes (24,000, up to 4 objects), the same image tower (world-tiny hybrid ViT with attention
pooling), steps and batch; no text. Each step draws a seeded slice of the scenes and two augmented views
of each (mmfm.vision.augment), so a batch is a pure function of the step. Held-out colour x shape
compositions never appear in the scenes the world's training split draws (as for CLIP)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmfm.errors import ConfigError, DataError
from mmfm.eval.probes import probe_world
from mmfm.models.simclr import SimCLR, SimCLRConfig
from mmfm.nn.losses import nt_xent_loss
from mmfm.train.clip import WORLD_TINY_DATA, WORLD_TINY_TRAIN, world_towers
from mmfm.train.trainer import TrainConfig, Trainer, run_folder, split_preset
from mmfm.vision.augment import SimCLRAugment
from mmfm.world import World
from mmfm.world.scene import render


def world_tiny_config(stem: str = "conv", tower: str = "vit") -> SimCLRConfig:
    vision, _ = world_towers(stem)
    return SimCLRConfig(vision={**vision, "pool": "attn", "attn_pool_heads": 4}, tower=tower, feature_dim=128,
                        proj_hidden=512, proj_dim=128)


PRESETS = {
    # CLIP's world-tiny schedule and scenes; temperature 0.2 (the paper's best for its batch sizes is 0.1-0.5)
    "world-tiny": dict(model=world_tiny_config, train=WORLD_TINY_TRAIN, **WORLD_TINY_DATA, temperature=0.2,
                       strength=0.5),
    "world-tiny-resnet": dict(model=lambda: world_tiny_config(tower="resnet"), train=WORLD_TINY_TRAIN,
                              **WORLD_TINY_DATA, temperature=0.2, strength=0.5),
    # one object per scene: two crops then show the same object, so its shape is something they share
    "world-tiny-single": dict(model=world_tiny_config, train=WORLD_TINY_TRAIN,
                              **{**WORLD_TINY_DATA, "max_objects": 1}, temperature=0.2, strength=0.5),
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
              max_objects: int = 4, background: str | None = None, progress: bool = True) -> WorldSimCLRData:
        """`background`: None keeps the world's (flat, gradient or noise, each with its own shade); "flat"
        paints every training scene's background flat in its first shade, so texture and gradient can no
        longer tell two scenes apart (the probes still read ordinary world scenes)."""
        from tqdm.auto import tqdm

        if background not in (None, "flat"):
            raise ConfigError(f"background must be None or 'flat', got {background!r}")
        world = World(seed=seed, size=config.vision.image_size, max_objects=max_objects)
        images = torch.empty(n, 3, world.size, world.size, dtype=torch.uint8)
        for i in tqdm(range(n), desc="world train scenes", disable=not progress, dynamic_ncols=True):
            scene = world.scene("train", i)
            if background == "flat":
                scene = replace(scene, background=replace(scene.background, kind="flat"))
            images[i] = torch.from_numpy(render(scene, world.size).image).permute(2, 0, 1)
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


def image_files(data, images=None, image_key: str = "filepath", max_bad: float = 0.1):
    """The images of a folder (any depth; class folders are fine, their names are not used) or of a CSV's
    image column, as (paths, DataReport)."""
    from mmfm.data.files import IMAGE_SUFFIXES, DataReport, image_root, resolve_image
    from mmfm.data.pairs import read_table

    data = Path(data)
    report = DataReport(str(data), max_bad)
    if data.is_dir():
        paths = []
        for f in sorted(data.rglob("*")):
            if f.is_file():
                report.seen()
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(f)
                else:
                    report.skip("not an image file", str(f))
    elif data.suffix.lower() in (".csv", ".tsv"):
        root, paths = image_root(data, images), []
        for i, row in enumerate(read_table(data, (image_key,)), 2):
            report.seen()
            p = resolve_image(root, row[image_key])
            if p is None:
                report.skip("missing image file", f"line {i}")
            else:
                paths.append(p)
    else:
        raise DataError(f"{data}: SimCLR reads images from a folder or a CSV's {image_key!r} column")
    return paths, report.check()


@dataclass
class FolderSimCLRData:
    """A user's images (no labels): each step a seeded slice, each image resized (shorter side) and
    centre-cropped to the model's size, then two augmented views; unreadable images counted and
    replaced by the next."""

    paths: list
    report: object
    size: int
    mean: torch.Tensor
    std: torch.Tensor
    batch_size: int
    augment: SimCLRAugment
    seed: int = 0

    def __post_init__(self):
        from mmfm.data.files import ImageCache

        self.cache = ImageCache(self.report)

    def image(self, i: int):
        from PIL import Image

        img = self.cache.load(self.paths[i])
        if img is None:
            return None
        s = self.size / min(img.size)
        img = img.resize((max(self.size, round(img.width * s)), max(self.size, round(img.height * s))),
                         Image.BICUBIC)
        left, top = (img.width - self.size) // 2, (img.height - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1, accum: int = 1) -> dict:
        from mmfm.data.files import positions, take

        idx = positions(len(self.paths), self.batch_size, step, self.seed, micro, rank, world, accum)
        x = torch.stack(take(idx, len(self.paths), self.image)).float() / 255.0
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
                       min_scale: float = 0.08, hue: float | None = None, background: str | None = None, data=None,
                       images=None, image_key: str = "filepath",
                       max_bad: float = 0.1, **overrides) -> dict:
    """Train SimCLR on world scenes, or on the images of `data` (a folder or a CSV; labels unused), with the
    preset's model and schedule (overrides: any TrainConfig field); save out/model and write out/report.json
    (with the world probes, mmfm.eval.probes, when trained on the world). `color_jitter=False`: the
    paper's ablation."""
    config, tcfg, extra = preset(preset_name)
    tcfg: TrainConfig = tcfg.update(**overrides)
    tcfg.progress = progress
    out = run_folder(out)
    t0 = time.perf_counter()
    aug = SimCLRAugment(config.vision.image_size, strength=strength or extra["strength"], color_jitter=color_jitter,
                        min_scale=min_scale, hue=hue)
    reports = []
    if data is not None:
        paths, report = image_files(data, images, image_key, max_bad)
        reports.append(report)
        mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(config.image_std).view(1, 3, 1, 1)
        source = FolderSimCLRData(paths, report, config.vision.image_size, mean, std, tcfg.batch_size, aug, tcfg.seed)
        evaluate = False
    else:
        source = WorldSimCLRData.build(config, scenes or extra["scenes"], tcfg.batch_size, aug, seed=tcfg.seed,
                                       max_objects=extra["max_objects"], background=background, progress=progress)
    torch.manual_seed(tcfg.seed)
    model = SimCLR(config)
    t = temperature or extra["temperature"]
    trainer = Trainer(SimCLRTrainModule(model, t), tcfg, lambda s, m, r, w: source.batch(s, m, r, w, tcfg.accum), out)
    trainer.train(resume=resume)
    report = {"preset": preset_name, "color_jitter": color_jitter, "strength": aug.strength, "temperature": t,
              "min_scale": min_scale, "hue": aug.hue, "background": background or "world",
              "max_objects": extra["max_objects"],
              "train_seconds": round(time.perf_counter() - t0, 1),
              "train_config": {k: getattr(tcfg, k) for k in ("steps", "batch_size", "lr", "seed")}}
    if reports:
        report["data_report"] = [r.summary() for r in reports]
    if trainer.rank == 0:
        model.save_pretrained(out / "model")
        if reports:
            (out / "data_report.json").write_text(json.dumps([r.to_dict() for r in reports], indent=2))
        if evaluate:
            report["probes"] = probe_world(model.eval(), n_test=eval_n, seed=tcfg.seed)
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


__all__ = ["train_world_simclr", "WorldSimCLRData", "SimCLRTrainModule", "PRESETS", "world_tiny_config"]
