"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"):
an image tower learns without labels by pulling two augmented views of an image together and pushing the
other images of the batch away (NT-Xent, `mmfm.nn.losses.nt_xent_loss`), through a projection head;
the features a classifier then reads are taken *before* the head (the paper's finding: the head
throws away what the augmentations vary, colour for one).

The tower is CLIP's image tower (any `CLIPVisionConfig`: the world-tiny hybrid ViT, a plain ViT), so
SimCLR and CLIP compare at the same architecture, or a small ResNet (`tower="resnet"`, the paper's
kind); the head is the paper's 2-layer MLP (with BatchNorm, as SimCLR v2 and the reference
implementations use it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.checkpoint import load_state_dict, load_strict, read_json, resolve, save_model_folder
from mmfm.config import Config
from mmfm.errors import CheckpointError
from mmfm.models.clip import CLIPVisionConfig
from mmfm.nn import VisionTransformer
from mmfm.nn.resnet import ResNet
from mmfm.vision.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPPreprocess


@dataclass
class SimCLRConfig(Config):
    POSITIVE: ClassVar[tuple[str, ...]] = ("feature_dim", "proj_hidden", "proj_dim", "norm_eps")

    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)  # image_size counts for both towers
    tower: Literal["vit", "resnet"] = "vit"  # CLIP's image tower | a small ResNet (mmfm.nn.resnet)
    resnet_widths: tuple[int, ...] = (16, 32, 64, 128)
    feature_dim: int = 128  # the tower's output: the features probes and k-NN read
    proj_hidden: int = 512
    proj_dim: int = 128
    norm_eps: float = 1e-5
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD


class SimCLR(nn.Module):
    def __init__(self, config: SimCLRConfig | None = None):
        super().__init__()
        self.config = c = config or SimCLRConfig()
        v = c.vision
        if c.tower == "resnet":
            self.visual = ResNet(tuple(c.resnet_widths), output_dim=c.feature_dim)
        else:
            self.visual = VisionTransformer(
                image_size=v.image_size, patch_size=v.patch_size, width=v.width, layers=v.layers, heads=v.heads,
                mlp_dim=v.mlp_dim, act=v.act, output_dim=c.feature_dim, norm_eps=c.norm_eps, stem=v.stem,
                pool=v.pool, attn_pool_heads=v.attn_pool_heads,
            )
        self.head = nn.Sequential(nn.Linear(c.feature_dim, c.proj_hidden, bias=False), nn.BatchNorm1d(c.proj_hidden),
                                  nn.ReLU(inplace=True), nn.Linear(c.proj_hidden, c.proj_dim))

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """pixels (B, 3, H, W), preprocessed -> features (B, feature_dim), before the projection head."""
        x = self.visual(pixels).pooled
        return F.normalize(x, dim=-1) if normalize else x

    def project(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels -> z (B, proj_dim): what NT-Xent compares."""
        return self.head(self.encode_image(pixels))

    @property
    def preprocess(self) -> CLIPPreprocess:
        c = self.config
        return CLIPPreprocess(c.vision.image_size, c.image_mean, c.image_std)

    def save_pretrained(self, folder) -> Path:
        return save_model_folder(folder, {"model_type": "mmfm-simclr", **self.config.to_dict()}, self.state_dict())

    @classmethod
    def from_pretrained(cls, path) -> SimCLR:
        return load_mmfm_simclr(resolve(path)).eval()


def load_mmfm_simclr(folder: Path) -> SimCLR:
    cfg = read_json(Path(folder) / "config.json")
    if cfg.get("model_type") != "mmfm-simclr":
        raise CheckpointError(f"{folder}: config.json is not an mmfm SimCLR config")
    model = SimCLR(SimCLRConfig.from_dict({k: v for k, v in cfg.items() if k != "model_type"}))
    load_strict(model, load_state_dict(Path(folder) / "model.safetensors"), str(folder))
    return model.eval()


__all__ = ["SimCLR", "SimCLRConfig", "load_mmfm_simclr"]
