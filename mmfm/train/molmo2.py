"""Training Molmo2 on world videos with SmolLM2-135M-Instruct as the LM and the shipped world CLIP's
tower as the frozen vision encoder: the adapter and LoRA adapters on every linear layer of the LM
learn (or, with `train_lm`, every LM weight, as Molmo2 trains it); batches are message trees packed into
rows (mmfm.data.molmo2), with token weighting.

Ablations the recipe exposes: `packed=False` (one padded row per question), `weighting=False`,
`bidirectional=False` (vision tokens attend causally, as an LLM's text does).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

import mmfm
from mmfm.checkpoint import load_strict
from mmfm.data.molmo2_world import WorldVideoData
from mmfm.errors import ConfigError
from mmfm.eval.molmo2_world import evaluate_molmo2_world
from mmfm.lm.frozen_base import after_meta_load, tower_state
from mmfm.lm.model import load_lm, smollm2_path
from mmfm.models.clip import CLIP
from mmfm.models.molmo2 import Molmo2, Molmo2Config
from mmfm.nn.lora import LoRALinear, apply_lora
from mmfm.train.trainer import FrozenLMPrecision, TrainConfig, Trainer, lm_dtype
from mmfm.weights import path as weights_path

LORA_TARGETS = ("attn.qkv", "attn.out", "mlp.gate_up", "mlp.down")
LM_LR_SCALE = 1 / 6  # the whole LM learns at a sixth of the adapter's lr (Molmo2 gives its connector the larger)
EXTRA = 10  # Molmo2's vision ids, past SmolLM2's vocabulary in Molmo2's order (im_start ... <|video|>)

PRESETS = {
    "world-video": dict(
        model=dict(adapter=dict(feature_layers=(-1, -3), width=96, heads=4, head_dim=24, hidden=1536,
                                video_pool=(2, 2), image_pool=(2, 2))),
        lora=dict(r=16, alpha=32, targets=list(LORA_TARGETS)),
        data=dict(frames=8, size=64, fps=2.0, max_len=1024, max_qas=4),  # rows of <= 1024: 2x padded (bench)
        train=dict(steps=250, batch_size=4, lr=3e-4, weight_decay=0.0, warmup=20, min_lr=1e-5, log_every=10),
    ),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown Molmo2 preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def build_world_molmo2(vision_dir=None, lm=None, seed: int = 0, lm_dtype: str = "bfloat16", **model_kwargs) -> Molmo2:
    """A new Molmo2: a CLIP's vision tower (default: the shipped world CLIP), SmolLM2 (frozen) with ten
    input-only embeddings for the vision tokens, and a freshly initialised adapter."""
    clip = mmfm.load(vision_dir or weights_path("clip-world-tiny"))
    if not isinstance(clip, CLIP):
        raise ConfigError(f"{vision_dir}: the vision tower must come from a CLIP checkpoint")
    lm = lm or load_lm(smollm2_path(), dtype=lm_dtype)
    v = lm.config.vocab_size
    lm_cfg = {**lm.config.to_dict(), "tie_embeddings": False, "extra_vocab": EXTRA}
    ids = dict(image_start_id=v, image_end_id=v + 1, image_patch_id=v + 2, image_col_id=v + 3, low_res_start_id=v + 4,
               image_low_id=v + 6, frame_start_id=v + 7, frame_end_id=v + 8)
    config = Molmo2Config(tower="clip", clip_vision=clip.config.vision, image_mean=clip.config.image_mean,
                          image_std=clip.config.image_std, lm=lm_cfg, max_crops=1, overlap_margins=(0, 0),
                          base_lm="smollm2", **ids, **model_kwargs)
    with torch.device("meta"):
        model = Molmo2(config)
    sd = {"vision.vit." + k[len("vision."):]: t for k, t in tower_state(clip, model.vision.vit).items()}
    base = lm.model.state_dict()
    g = torch.Generator().manual_seed(seed)
    embed = base["embed.weight"]
    extra = torch.randn(EXTRA, embed.shape[1], generator=g).to(embed.dtype) * embed.float().std()
    sd.update({"lm." + k: t for k, t in base.items() if k != "lm_head.weight"})
    sd["lm.embed.weight"] = torch.cat([embed, extra])
    sd["lm.lm_head.weight"] = embed.clone()
    torch.manual_seed(seed)
    with torch.device("cpu"):
        fresh = Molmo2.make_adapter(config)
    sd.update({"adapter." + k: t for k, t in fresh.state_dict().items()})
    if config.frame_col_tokens:  # the column token starts as the LM's newline, a row break it already knows
        sd["lm.embed.weight"][config.image_col_id] = embed[lm.tokenizer.encode("\n")[-1]]
    load_strict(model, sd, "world Molmo2", assign=True)
    after_meta_load(model)
    model.vision.float()
    model.adapter.float()
    model.tokenizer = lm.tokenizer
    return model


def prepare(model: Molmo2, lora: dict | None, lm_lr_scale: float = 1.0) -> int:
    """Freeze the tower; the adapter learns, and LoRA adapters on the LM (`lora`: added unless the model
    has its own) or, with `lora=None` and no adapters, the whole LM (at `lm_lr_scale` of the lr).
    Trainable weights in fp32; returns their number."""
    model.requires_grad_(False)
    if lora and not model.config.lora:
        apply_lora(model.lm, lora["targets"], r=lora["r"], alpha=lora["alpha"])
        model.config.lora = {"r": lora["r"], "alpha": lora["alpha"], "targets": list(lora["targets"])}
    model.adapter.requires_grad_(True)
    if not model.config.lora:
        model.lm.requires_grad_(True)
        for p in model.lm.parameters():
            p.lr_scale = lm_lr_scale
        model.config.base_lm = ""  # the whole LM learns: its weights are the model's own, saved with it
    for m in model.lm.modules():
        if isinstance(m, LoRALinear):
            m.lora_a.requires_grad_(True)
            m.lora_b.requires_grad_(True)
    n = 0
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
            n += p.numel()
    return n


class Molmo2TrainModule(FrozenLMPrecision, nn.Module):
    """One step: the (packed) batch's loss (the causal ablation changes the batches' masks, see
    CausalVisionData); only the trainable tensors are checkpointed."""

    checkpoint_trainable_only = True

    def __init__(self, model: Molmo2):
        super().__init__()
        self.model = model

    def forward(self, batch: dict):
        out = self.model(**batch)
        return out.loss, {"tokens": float(out.num_tokens), "seq_tokens": float(batch["input_ids"].numel())}


class CausalVisionData:
    """Wraps a WorldVideoData so that its masks give vision tokens no bidirectional block."""

    def __init__(self, data: WorldVideoData):
        self.data = data

    def batch(self, *args, **kwargs) -> dict:
        b = self.data.batch(*args, **kwargs)
        causal = torch.tril(torch.ones(b["mask"].shape[-2:], dtype=torch.bool))
        b["mask"] = b["mask"] & causal  # the tree stays; within it, strictly causal
        return b


def train_world_molmo2(preset_name: str = "world-video", out="runs/molmo2", resume: bool = False,
                       progress: bool = True, evaluate: bool = True, eval_n: int = 50, packed: bool = True,
                       weighting: bool = True, bidirectional: bool = True, train_lm: bool = False,
                       frame_layout: bool = False, tasks: tuple[str, ...] | None = None, **overrides) -> dict:
    """`train_lm`: every LM weight learns (at LM_LR_SCALE of the lr) instead of LoRA adapters;
    `frame_layout`: a column token after each row of a frame's patches (Molmo2Config.frame_col_tokens);
    `tasks`: train on these task kinds only (mmfm.world.video.video_tasks; the evaluation asks every kind)."""
    p = preset(preset_name)
    tcfg = TrainConfig(**p["train"]).update(**overrides)
    tcfg.progress = progress
    out = Path(out)
    t0 = time.perf_counter()
    model = build_world_molmo2(seed=tcfg.seed, lm_dtype=lm_dtype(tcfg.precision), frame_col_tokens=frame_layout,
                               **p["model"])
    trainable = prepare(model, None if train_lm else p["lora"], LM_LR_SCALE)
    model.config.bidirectional_vision = bidirectional  # the model is asked as it was trained
    data = WorldVideoData(model, model.tokenizer, seed=tcfg.seed, batch_size=tcfg.batch_size, packed=packed,
                          weighting=weighting, tasks=tasks, **p["data"])
    source = data if bidirectional else CausalVisionData(data)
    trainer = Trainer(Molmo2TrainModule(model), tcfg, lambda s, m, r, w: source.batch(s, m, r, w, tcfg.accum), out)
    trainer.train(resume=resume)
    report = {"preset": preset_name, "trainable_parameters": trainable, "packed": packed, "weighting": weighting,
              "bidirectional": bidirectional, "train_lm": train_lm, "frame_layout": frame_layout,
              "tasks": list(tasks) if tasks else None, "train_seconds": round(time.perf_counter() - t0, 1),
              "train_config": {k: getattr(tcfg, k) for k in ("steps", "batch_size", "lr", "seed")}}
    if trainer.rank == 0:
        model.save_pretrained(out / "model")
        if evaluate:
            every = WorldVideoData(model, model.tokenizer, seed=tcfg.seed, **p["data"])  # every task kind
            report.update(evaluate_molmo2_world(model.eval(), every, n=eval_n, out=out, progress=progress))
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


__all__ = ["train_world_molmo2", "build_world_molmo2", "prepare", "PRESETS"]
