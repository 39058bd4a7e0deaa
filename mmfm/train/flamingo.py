"""Training Flamingo on the Shapes world: SmolLM2-135M-Instruct frozen (bf16), the shipped world CLIP's
vision tower frozen, a Perceiver Resampler, gated cross-attention blocks and the two new token rows
learned on interleaved world episodes (`mmfm.data.flamingo_world`).

The `world-tiny` preset is Flamingo scaled to a 2-core budget: a block before every 5th of the 30 LM
layers (OpenFlamingo-9B has one every 4th), 16 latents per image, a resampler of depth 2. Two changes
of optimisation (not of architecture) make it learn in minutes instead of never (measurements in
bench/RESULTS.md):
- the gated blocks learn at 10x the base lr: SmolLM2's residual stream is large past layer 3, and a
  fresh block's output, small before its tanh gate, stays a rounding error at the base lr;
- the latents start at N(0, 0.02) instead of OpenFlamingo's N(0, 1): with unit latents the resampler's
  output hardly depends on the image at first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import mmfm
from mmfm.checkpoint import load_strict
from mmfm.data.flamingo_world import WorldEpisodes
from mmfm.errors import ConfigError
from mmfm.eval.fewshot import evaluate_fewshot
from mmfm.lm.frozen_base import after_meta_load, tower_state
from mmfm.lm.model import load_lm, smollm2_path
from mmfm.models.clip import CLIP
from mmfm.models.flamingo import Flamingo, FlamingoConfig, add_flamingo_tokens
from mmfm.train.trainer import FrozenLMTrainModule, TrainConfig, Trainer
from mmfm.weights import path as weights_path
from mmfm.world import World

PRESETS = {
    "world-tiny": dict(
        model=dict(cross_attn_every_n_layers=5, num_latents=16, resampler_depth=2, resampler_heads=4,
                   resampler_dim_head=32, xattn_heads=8, xattn_dim_head=64, xattn_ff_mult=2, vision_ln_post=False,
                   latent_init_std=0.02),
        xattn_lr_scale=10.0,
        train=dict(steps=800, batch_size=8, lr=1e-3, weight_decay=0.0, warmup=30, min_lr=1e-5, log_every=10),
    ),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown Flamingo preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def build_world_flamingo(vision_dir=None, lm=None, seed: int = 0, **model_kwargs) -> Flamingo:
    """A new Flamingo: a CLIP's vision tower (default the shipped world CLIP), SmolLM2 (bf16, frozen), and
    freshly initialised resampler, gated blocks (gates 0) and new token rows (fp32, trainable)."""
    clip = mmfm.load(vision_dir or weights_path("clip-world-tiny"))
    if not isinstance(clip, CLIP):
        raise ConfigError(f"{vision_dir}: the vision tower must come from a CLIP checkpoint")
    lm = lm or load_lm(smollm2_path(), dtype="bfloat16")
    c = clip.config
    config = FlamingoConfig(vision=c.vision, lm=lm.config, image_mean=c.image_mean, image_std=c.image_std,
                            vision_norm_eps=c.norm_eps, base_lm="smollm2", **model_kwargs)
    torch.manual_seed(seed)
    model = Flamingo(config)  # small parts at init; the LM and the tower are replaced below
    sd = tower_state(clip, model.vision)  # the CLIP's head is not part of the tower
    sd.update({"lm." + k: v for k, v in lm.model.state_dict().items()})
    sd.update({k: v for k, v in model.state_dict().items() if not k.startswith(("lm.", "vision."))})
    with torch.device("meta"):
        fresh = Flamingo(config)
    load_strict(fresh, sd, "world Flamingo", assign=True)
    after_meta_load(fresh)
    fresh.init_new_tokens()
    fresh.vision.float()
    fresh.tokenizer = add_flamingo_tokens(lm.tokenizer, config.lm.vocab_size)
    return fresh


def train_world_flamingo(preset_name: str = "world-tiny", out="runs/flamingo", vision=None, resume: bool = False,
                         progress: bool = True, evaluate: bool = True, eval_n: int = 60, **overrides) -> dict:
    """Builds the model, trains it, writes out/model, metrics.jsonl, curves.png, report.json and (with
    evaluate) the few-shot table and plot."""
    p = preset(preset_name)
    tcfg = TrainConfig(**p["train"]).update(**overrides)
    tcfg.progress = progress
    out = Path(out)
    t0 = time.perf_counter()
    model = build_world_flamingo(vision, seed=tcfg.seed, **p["model"])
    trainable = model.freeze()
    for name, q in model.named_parameters():
        if q.requires_grad:
            q.data = q.data.float()
            if name.startswith("xattn."):
                q.lr_scale = p.get("xattn_lr_scale", 1.0)  # read by the trainer's param_groups
    c = model.config
    data = WorldEpisodes(model.tokenizer, c.image_token_id, c.eoc_token_id, tcfg.batch_size, c.image_mean,
                         c.image_std, World(seed=tcfg.seed), seed=tcfg.seed)
    trainer = Trainer(FrozenLMTrainModule(model), tcfg, lambda s, m, r, w: data.batch(s, m, r, w, tcfg.accum), out)
    trainer.train(resume=resume)
    report = {"preset": preset_name, "trainable_parameters": trainable,
              "train_seconds": round(time.perf_counter() - t0, 1),
              "gates": {k: [round(float(torch.tanh(b.attn_gate)), 4), round(float(torch.tanh(b.ff_gate)), 4)]
                        for k, b in model.xattn.items()},
              "train_config": {k: getattr(tcfg, k) for k in ("steps", "batch_size", "lr", "seed")}}
    model = model.to(torch.bfloat16).eval()  # one dtype for inference (the trainable parts trained in fp32)
    if trainer.rank == 0:
        model.save_pretrained(out / "model")
        if evaluate:
            report["fewshot"] = evaluate_fewshot(model, n=eval_n, seed=tcfg.seed, out=out)
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


__all__ = ["train_world_flamingo", "build_world_flamingo", "PRESETS"]
