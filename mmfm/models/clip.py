"""CLIP (Radford et al. 2021): a ViT image tower and a causal text tower trained so that matching
image-text pairs have the highest cosine similarity in a batch.

    image (B, 3, H, W) -> VisionTransformer -> pooled class token -> proj -> (B, D)
    ids   (B, T)       -> TextTransformer   -> first end-of-text token -> proj -> (B, D)
    logits_per_image = exp(logit_scale) * normalize(img) @ normalize(txt).T

Follows OpenAI's CLIP / open_clip / transformers' CLIPModel: pre-LN blocks, `ln_pre` before the vision
blocks, LayerNorm on the pooled token, learnable temperature initialised to ln(1/0.07) and clamped at
ln(100). The activation comes from the config (OpenAI's weights use quick_gelu), never from a name.
"""

from __future__ import annotations

import json
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.checkpoint import load_state_dict, load_strict, read_json, resolve, save_model_folder
from mmfm.config import Config
from mmfm.errors import CheckpointError, ConfigError
from mmfm.nn import TextTransformer, VisionTransformer
from mmfm.text.tokenizer import CLIPTokenizer
from mmfm.vision.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPPreprocess

Activation = Literal["gelu", "quick_gelu", "gelu_tanh", "relu"]


@dataclass
class CLIPVisionConfig(Config):
    POSITIVE: ClassVar[tuple[str, ...]] = ("image_size", "patch_size", "width", "layers", "heads", "mlp_dim",
                                           "attn_pool_heads")

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int | None = None  # None: 4 x width
    act: Activation = "gelu"
    stem: Literal["patch", "conv"] = "patch"  # CLIP's ViT | hybrid: a small CNN makes the tokens
    pool: Literal["cls", "attn"] = "cls"  # CLIP's class token | open_clip's attentional pooler (one query)
    attn_pool_heads: int = 8

    def parameters(self) -> int:
        w, mlp = self.width, self.mlp_dim or 4 * self.width
        return self.layers * (4 * w * w + 2 * w * mlp) + ((self.image_size // self.patch_size) ** 2 + 3 * 256) * w


@dataclass
class CLIPTextConfig(Config):
    POSITIVE: ClassVar[tuple[str, ...]] = ("vocab_size", "context_length", "width", "layers", "heads", "mlp_dim")

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int | None = None
    act: Activation = "gelu"
    sot_token_id: int = 49406
    eot_token_id: int = 49407
    pad_token_id: int = 0

    def parameters(self) -> int:
        w, mlp = self.width, self.mlp_dim or 4 * self.width
        return self.layers * (4 * w * w + 2 * w * mlp) + (self.vocab_size + self.context_length) * w


@dataclass
class CLIPConfig(Config):
    POSITIVE: ClassVar[tuple[str, ...]] = ("embed_dim", "norm_eps")

    embed_dim: int = 512
    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    norm_eps: float = 1e-5
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    crop_rounding: Literal["round", "floor"] = "round"  # "floor" for checkpoints preprocessed by transformers
    tokenizer: Literal["clip", "world"] = "clip"  # files in the folder | the world's, shipped with mmfm

    def validate(self) -> None:
        for tower in (self.vision, self.text):
            if tower.width % tower.heads:
                raise ConfigError(f"width {tower.width} is not divisible by heads {tower.heads}")
        if self.vision.image_size % self.vision.patch_size:
            raise ConfigError(
                f"image_size {self.vision.image_size} is not a multiple of patch_size {self.vision.patch_size}"
            )
        t = self.text
        for name in ("sot_token_id", "eot_token_id", "pad_token_id"):
            if not 0 <= getattr(t, name) < t.vocab_size:
                raise ConfigError(f"text.{name}={getattr(t, name)} is outside the vocabulary (size {t.vocab_size})")


class CLIPLogits(NamedTuple):
    logits_per_image: torch.Tensor  # (B_img, B_txt)
    logits_per_text: torch.Tensor  # (B_txt, B_img)


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig | None = None):
        super().__init__()
        self.config = c = config or CLIPConfig()
        v, t = c.vision, c.text
        self.visual = VisionTransformer(
            image_size=v.image_size, patch_size=v.patch_size, width=v.width, layers=v.layers, heads=v.heads,
            mlp_dim=v.mlp_dim, act=v.act, output_dim=c.embed_dim, norm_eps=c.norm_eps, stem=v.stem, pool=v.pool,
            attn_pool_heads=v.attn_pool_heads,
        )
        self.text = TextTransformer(
            vocab_size=t.vocab_size, context_length=t.context_length, width=t.width, layers=t.layers, heads=t.heads,
            mlp_dim=t.mlp_dim, act=t.act, output_dim=c.embed_dim, eot_token_id=t.eot_token_id, norm_eps=c.norm_eps,
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(c.init_logit_scale)))
        self._init_weights()
        self.tokenizer = None  # set by from_pretrained / load when the folder has one

    def _init_weights(self) -> None:
        # OpenAI CLIP's initialisation: std scaled by width and depth.
        for tower, width, layers in ((self.visual, self.visual.width, len(self.visual.transformer.blocks)),
                                     (self.text, self.config.text.width, len(self.text.transformer.blocks))):
            proj_std = (width**-0.5) * ((2 * layers) ** -0.5)
            attn_std, fc_std = width**-0.5, (2 * width) ** -0.5
            for blk in tower.transformer.blocks:
                nn.init.normal_(blk.attn.qkv.weight, std=attn_std)
                nn.init.normal_(blk.attn.out.weight, std=proj_std)
                nn.init.normal_(blk.mlp.fc1.weight, std=fc_std)
                nn.init.normal_(blk.mlp.fc2.weight, std=proj_std)
            nn.init.normal_(tower.proj.weight, std=width**-0.5)

    # ------------------------------------------------------------------------------------- encoders
    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """pixels (B, 3, H, W), preprocessed -> (B, embed_dim)."""
        x = self.visual(pixels).pooled
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """input_ids (B, T <= context_length) -> (B, embed_dim)."""
        x = self.text(input_ids).pooled
        return F.normalize(x, dim=-1) if normalize else x

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=self.config.max_logit_scale).exp()

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> CLIPLogits:
        img = self.encode_image(pixels, normalize=True)
        txt = self.encode_text(input_ids, normalize=True)
        logits = self.scale() * img @ txt.T
        return CLIPLogits(logits, logits.T)

    # ------------------------------------------------------------------------------------- training knobs
    def lock_image_tower(self, unlocked_layers: int = 0) -> None:
        """Freeze the image tower (LiT), except its last `unlocked_layers` blocks and the projection."""
        heads = [m for m in (self.visual.attn_pool, self.visual.ln_post, self.visual.proj) if m is not None]
        _lock(self.visual, self.visual.transformer.blocks, unlocked_layers, heads)

    def lock_text_tower(self, unlocked_layers: int = 0) -> None:
        _lock(self.text, self.text.transformer.blocks, unlocked_layers, (self.text.ln_final, self.text.proj))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def compile_towers(self, **kwargs) -> CLIP:
        """torch.compile both towers in place (kwargs go to torch.compile)."""
        self.visual.compile(**kwargs)
        self.text.compile(**kwargs)
        return self

    @property
    def preprocess(self) -> CLIPPreprocess:
        c = self.config
        return CLIPPreprocess(c.vision.image_size, c.image_mean, c.image_std, crop_rounding=c.crop_rounding)

    # ------------------------------------------------------------------------------------- save / load
    def save_pretrained(self, folder) -> Path:
        """mmfm's folder: config.json + model.safetensors (+ the tokenizer's files). Other formats:
        `mmfm.save(model, folder, format="hf" | "open_clip")`."""
        return save_model_folder(folder, {"model_type": "mmfm-clip", **self.config.to_dict()}, self.state_dict(),
                                 tokenizer=self.tokenizer)

    @classmethod
    def from_pretrained(cls, path_or_id, **overrides) -> CLIP:
        """An mmfm CLIP folder (or Hub id); `mmfm.load` reads HF transformers and open_clip ones too.
        `overrides` (e.g. act=...) are checked against what the checkpoint records: a conflict raises
        CheckpointError."""
        path = resolve(path_or_id)
        return attach_tokenizer(load_mmfm_clip(path, **overrides), path).eval()


def _lock(tower: nn.Module, blocks, unlocked: int, heads) -> None:
    for p in tower.parameters():
        p.requires_grad = False
    for blk in list(blocks)[len(blocks) - unlocked :] if unlocked else []:
        for p in blk.parameters():
            p.requires_grad = True
    if unlocked:
        for m in heads:
            for p in m.parameters():
                p.requires_grad = True
    for m in tower.modules():  # a frozen BatchNorm (the conv stem's) keeps and uses its running statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.train = types.MethodType(_always_eval, m)
            m.eval()


def _always_eval(self, mode: bool = True):
    return nn.Module.train(self, False)


def load_mmfm_clip(folder: Path, **overrides) -> CLIP:
    cfg = read_json(folder / "config.json")
    if cfg.get("model_type") != "mmfm-clip":
        raise CheckpointError(f"{folder}: config.json is not an mmfm CLIP config")
    config = CLIPConfig.from_dict(apply_overrides(cfg, overrides, str(folder)))
    model = CLIP(config)
    load_strict(model, load_state_dict(folder / "model.safetensors"), str(folder))
    return model


def attach_tokenizer(model, path: Path):
    """Give a CLIP or CoCa the tokenizer its folder holds (HF's vocab.json / tokenizer.json), or the
    world's when its config says so; refuse one whose start/end ids or size do not fit the text tower."""
    t = model.config.text
    tok = None
    if path.is_dir() and ((path / "vocab.json").is_file() or (path / "tokenizer.json").is_file()):
        tok = CLIPTokenizer.from_pretrained(path, context_length=t.context_length, pad_id=t.pad_token_id)
    elif model.config.tokenizer == "world":
        tok = CLIPTokenizer.world(context_length=t.context_length)
    if tok is not None:
        if tok.eot_token_id != t.eot_token_id or tok.sot_token_id != t.sot_token_id:
            raise CheckpointError(
                f"{path}: the tokenizer's start/end ids ({tok.sot_token_id}, {tok.eot_token_id}) differ from the "
                f"model config's ({t.sot_token_id}, {t.eot_token_id}); the text tower would pool the wrong token"
            )
        if tok.vocab_size > t.vocab_size:
            raise CheckpointError(f"{path}: tokenizer has {tok.vocab_size} tokens, the model only {t.vocab_size}")
    model.tokenizer = tok
    return model


def apply_overrides(cfg: dict, overrides: dict, source: str) -> dict:
    """Overrides fill in what a checkpoint does not record and must agree with what it does; a
    contradiction (say act="gelu" for weights recorded as quick_gelu) raises CheckpointError, so a
    checkpoint never loads silently wrong. Keys: "act" (both towers), "vision.act", "embed_dim", ..."""
    out = json.loads(json.dumps(cfg))
    for key, value in overrides.items():
        tower, _, name = key.rpartition(".")
        if tower:
            targets = [out.setdefault(tower, {})]
        elif name in ("act", "mlp_dim", "heads", "width", "layers"):
            targets = [out.setdefault("vision", {}), out.setdefault("text", {})]
        else:
            targets = [out]
        for d in targets:
            if (
                name in d
                and d[name] != value
                and not (isinstance(value, (list, tuple)) and list(value) == list(d[name]))
            ):
                raise CheckpointError(
                    f"{source} records {key}={d[name]!r}, which conflicts with the requested {value!r}"
                )
            d[name] = value
    return out
