"""Training LLaVA on the Shapes world in LLaVA's two stages, with SmolLM2-135M-Instruct as the LM and
the shipped world CLIP as the frozen vision tower.

Stage 1 learns the projector alone (lr 1e-3) on captions, template "plain".
Stage 2 learns the projector and LoRA adapters on every linear layer of the LM (lr 2e-4) on world
instructions with the LM's chat template. Why LoRA and not the full LM: on a CPU the frozen weights
need no weight gradients and no optimizer state (AdamW would hold 1 GB for 135 M parameters), a step
is about a third cheaper, and the trained model is a few MB (adapters + projector) because the base
LM is read from its package; LLaVA-1.5 reports LoRA on par with full fine-tuning.

The `world-tiny` preset uses Molmo's connector (two ViT layers, 2x2 attention pooling, SwiGLU):
16 image tokens instead of 64 for the 8x8 grid, which makes a step ~2x cheaper at this size.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import mmfm
from mmfm.checkpoint import load_strict
from mmfm.data.llava_world import KINDS, WorldInstructions, kind_probabilities, parse_qa_weights
from mmfm.errors import ConfigError
from mmfm.eval.llava_world import evaluate_llava_world
from mmfm.lm.frozen_base import after_meta_load, tower_state
from mmfm.lm.model import load_lm, smollm2_path
from mmfm.models.clip import CLIP
from mmfm.models.llava import Llava, LlavaConfig
from mmfm.nn.connectors import MolmoConnector
from mmfm.nn.lora import merge_lora
from mmfm.train.trainer import FrozenLMTrainModule, TrainConfig, Trainer, lm_dtype
from mmfm.weights import path as weights_path
from mmfm.world import World

LORA_TARGETS = ("attn.qkv", "attn.out", "mlp.gate_up", "mlp.down")
SYSTEM = "You answer questions about pictures of shapes."

PRESETS = {
    "world-tiny": dict(
        model=dict(projector="molmo", vision_layers=(-2, -4), pool_heads=4, system_prompt=SYSTEM),
        lora=dict(r=16, alpha=32, targets=list(LORA_TARGETS)),
        stage1=dict(steps=150, batch_size=32, lr=1e-3, weight_decay=0.0, warmup=15, min_lr=1e-5, log_every=5),
        stage2=dict(steps=500, batch_size=16, lr=2e-4, weight_decay=0.0, warmup=25, min_lr=1e-5, log_every=10),
    ),
    "world-tiny-llava": dict(  # LLaVA-1.5's projector on all 64 patches, same recipe
        model=dict(projector="mlp2x_gelu", vision_layers=(-2,), system_prompt=SYSTEM),
        lora=dict(r=16, alpha=32, targets=list(LORA_TARGETS)),
        stage1=dict(steps=150, batch_size=32, lr=1e-3, weight_decay=0.0, warmup=15, min_lr=1e-5, log_every=5),
        stage2=dict(steps=600, batch_size=16, lr=2e-4, weight_decay=0.0, warmup=30, min_lr=1e-5, log_every=10),
    ),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown LLaVA preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def build_world_llava(vision_dir=None, lm=None, seed: int = 0, lm_dtype: str = "bfloat16", **model_kwargs) -> Llava:
    """A new LLaVA: a CLIP's vision tower (default: the shipped world CLIP), SmolLM2 (frozen, bf16 by
    default) and a freshly initialised projector."""
    clip = _load_clip(vision_dir or weights_path("clip-world-tiny"))
    lm = lm or load_lm(smollm2_path(), dtype=lm_dtype)
    c = clip.config
    config = LlavaConfig(vision=c.vision, lm=lm.config, image_mean=c.image_mean, image_std=c.image_std,
                         vision_norm_eps=c.norm_eps, base_lm="smollm2", **model_kwargs)
    with torch.device("meta"):
        model = Llava(config)
    sd = tower_state(clip, model.vision)  # the CLIP's head is not part of the tower
    sd.update({"lm." + k: v for k, v in lm.model.state_dict().items()})
    torch.manual_seed(seed)
    with torch.device("cpu"):
        fresh = Llava.make_projector(config)
    sd.update({"projector." + k: v for k, v in fresh.state_dict().items()})

    load_strict(model, sd, "world LLaVA", assign=True)
    after_meta_load(model)
    model.vision.float()
    model.tokenizer = lm.tokenizer
    return model


def prepare_stage(model: Llava, stage: int, lora: dict | None, train_vision: bool = False,
                  train_lm: bool = False) -> int:
    """Freeze for the stage (the tower too unless `train_vision`), add LoRA adapters in stage 2 (or, with
    `train_lm`, fold any adapters in and train the whole LM, as Molmo does), keep trainable weights in
    fp32. Returns the number of trainable parameters."""
    if stage == 2 and train_lm and model.config.lora:
        merge_lora(model.lm)
        model.config.lora = None
    if stage == 2 and lora and not train_lm and not model.config.lora:
        model.add_lora(lora["r"], lora["alpha"], lora["targets"])
    model.freeze(stage, vision=train_vision)
    if stage == 2 and not model.config.lora:
        model.config.base_lm = ""  # the whole LM learns: its weights are the model's own now, saved with it
    n = 0
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
            n += p.numel()
    return n


def _load_clip(vision_dir):
    clip = mmfm.load(vision_dir)
    if not isinstance(clip, CLIP):
        raise ConfigError(f"{vision_dir}: the vision tower must come from a CLIP checkpoint")
    return clip


def swap_tower(model: Llava, vision_dir) -> None:
    """Replace a LLaVA's vision tower by another CLIP's (same architecture), e.g. one fine-tuned with
    hard negatives; the projector is kept and stage 2 teaches it to read the new features."""
    clip = _load_clip(vision_dir)
    if clip.config.vision != model.config.vision:
        raise ConfigError(f"{vision_dir}: its vision tower ({clip.config.vision}) differs from the model's "
                          f"({model.config.vision}); a tower can only be swapped for one of the same shape")
    load_strict(model.vision, {k: v.float() for k, v in tower_state(clip, model.vision, prefix="").items()},
                f"vision tower from {vision_dir}")


def set_pool_size(model: Llava, pool: int) -> None:
    """Let a Molmo connector read p x p patches per image token (1: every patch is a token). Its weights
    do not depend on p: with p = 1 each token is the value of one patch where it was the attention-weighted
    mean of four, so a model trained pooled starts from tokens of the same kind, four times as many."""
    if not isinstance(model.projector, MolmoConnector):
        raise ConfigError("--pool-size applies to the molmo connector only (preset world-tiny)")
    if pool < 1 or model.grid % pool:
        raise ConfigError(f"--pool-size {pool} must divide the {model.grid} x {model.grid} patch grid")
    model.projector.pool = model.config.pool_size = pool


def set_crops(model: Llava, crops: int) -> None:
    """Let a Molmo connector read images as Molmo's multi-crop does: the whole image at the tower's size,
    then a crops x crops grid of tiles of an image drawn crops times larger (crops = 1: the image alone).
    No weight changes: the tower reads each tile at its own size and the connector pools the stitched grid
    of the tiles' patches as it pools one image's, so a model trained on one view starts from tokens of the
    same kind (though the tower now sees each object crops times larger than it was trained on)."""
    if not isinstance(model.projector, MolmoConnector):
        raise ConfigError("--crops applies to the molmo connector only (preset world-tiny)")
    if not 1 <= crops <= 4:
        raise ConfigError(f"--crops must be 1-4 (crops x crops tiles), got {crops}")
    model.config.crops = crops


def add_image_layout(model: Llava) -> None:
    """Give a Molmo connector Molmo's image layout: a start token, a column token after each row of image
    tokens, an end token (new learned embeddings; a model trained without them learns to read them in the
    next stage). The column token starts as the LM's newline, a row break it already knows; start and end
    as random vectors of the LM's embedding scale."""
    if not isinstance(model.projector, MolmoConnector):
        raise ConfigError("--image-layout applies to the molmo connector only (preset world-tiny)")
    if model.projector.layout is not None:
        return
    if model.tokenizer is None:
        raise ConfigError("--image-layout starts its column token from the LM's newline: the model has no tokenizer")
    table = model.lm.embed.weight
    newline = model.tokenizer.encode("\n")[-1]
    g = torch.Generator().manual_seed(0)
    start_end = torch.randn(2, table.shape[1], generator=g) * table.float().std()
    init = torch.stack([start_end[0], table[newline].float(), start_end[1]])
    model.projector.layout = torch.nn.Parameter(init.to(next(model.projector.parameters()).dtype))
    model.config.image_layout = True


def train_world_llava(stage: int, preset_name: str = "world-tiny", out="runs/llava", init=None, vision=None,
                      resume: bool = False, progress: bool = True, evaluate: bool = True, eval_n: int = 100,
                      qa_weights=None, kind_weights=None, pool_size: int | None = None, train_vision: bool = False,
                      image_layout: bool = False, train_lm: bool = False, crowded: float = 0.0, max_objects: int = 5,
                      crops: int | None = None, crowded_points: float = 0.0, **overrides) -> dict:
    """Stage 1 builds the model (vision tower from `vision`, default the shipped world CLIP) and writes
    out/stage1; stage 2 starts from `init` (default out/stage1/model), with its tower replaced by
    `vision`'s when given, and writes out/stage2. `qa_weights` ("shape=3,color=2" or a dict) weighs
    the question types of stage 2's single-question conversations, `kind_weights` ("point=0.4,count=0.3")
    the kinds of conversation (mmfm.data.llava_world.KINDS); `pool_size` sets the Molmo connector's
    pooling (1: 64 tokens per image, 2: 16), also on a `--from` model; `train_vision` trains the vision
    tower with the rest, as Molmo does (LLaVA keeps it frozen); `image_layout` adds Molmo's start / column /
    end tokens around the image tokens (also on a `--from` model); `train_lm` trains the whole LM in stage 2
    instead of LoRA adapters (as Molmo; the model folder then holds the LM); `crowded` (0-1) is the share of
    stage 2's count conversations asked about a scene with 4 or more of the counted thing, `crowded_points` (0-1)
    the share of its pointing conversations asking for 4 or more things; `max_objects` (1-12,
    the world's default 5) the most objects a training scene holds; `crops` (molmo connector, also on a `--from`
    model) Molmo's multi-crop: the world drawn at crops x the tower's size, read whole and as crops x crops
    tiles. Each stage writes model/, metrics.jsonl, curves.png and report.json."""
    if stage not in (1, 2):
        raise ConfigError(f"--stage must be 1 or 2, got {stage}")
    p = preset(preset_name)
    qa_weights = parse_qa_weights(qa_weights)
    kind_p = kind_probabilities(kind_weights)
    for name, share in (("--crowded-counts", crowded), ("--crowded-points", crowded_points)):
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"{name} is a share between 0 and 1, got {share}")
    tcfg = TrainConfig(**p[f"stage{stage}"]).update(**overrides)
    tcfg.progress = progress
    out = Path(out) / f"stage{stage}"
    t0 = time.perf_counter()
    if stage == 1:
        model = build_world_llava(vision, seed=tcfg.seed, lm_dtype=lm_dtype(tcfg.precision), **p["model"])
    else:
        init = Path(init) if init else out.parent / "stage1" / "model"
        if not (init / "config.json").is_file():
            raise ConfigError(
                f"stage 2 starts from a stage-1 model; none at {init} (run --stage 1 first or pass --from)"
            )
        model = mmfm.load(init, dtype=lm_dtype(tcfg.precision))
        model.vision.float()
        if vision is not None:
            swap_tower(model, vision)
    if pool_size is not None:
        set_pool_size(model, pool_size)
    if crops is not None:
        set_crops(model, crops)
    if image_layout:
        add_image_layout(model)
    trainable = prepare_stage(model, stage, p.get("lora"), train_vision, train_lm)
    enc = model.conversation()
    # 256 tokens hold every conversation of a 5-object scene at up to 74 image positions (64 tokens framed);
    # each further object can add a point (~13 tokens) to a count and a pointing answer, each further image
    # position (crops) a token, and an answer cut short would teach a count without its total
    budget = 256 + 24 * max(0, max_objects - 5) + max(0, model.tokens_per_image - 74)
    data = WorldInstructions(enc, stage, tcfg.batch_size, model.config.image_mean, model.config.image_std,
                             World(seed=tcfg.seed, size=model.input_size, max_objects=max_objects), seed=tcfg.seed,
                             qa_weights=qa_weights, kind_p=kind_p, max_len=budget, crowded=crowded,
                             crowded_points=crowded_points)
    trainer = Trainer(FrozenLMTrainModule(model), tcfg, lambda s, m, r, w: data.batch(s, m, r, w, tcfg.accum), out)
    trainer.train(resume=resume)
    report = {"preset": preset_name, "stage": stage, "trainable_parameters": trainable, "qa_weights": qa_weights,
              "kind_weights": dict(zip(KINDS, kind_p)), "crowded_counts": crowded,
              "crowded_points": crowded_points, "max_objects": max_objects,
              "tokens_per_image": model.tokens_per_image, "crops": model.config.crops,
              "train_vision": train_vision, "train_lm": train_lm, "image_layout": model.config.image_layout,
              "vision": str(vision) if vision else None,
              "train_seconds": round(time.perf_counter() - t0, 1), "skipped_conversations": data.skipped,
              "train_config": {k: getattr(tcfg, k) for k in ("steps", "batch_size", "lr", "seed")}}
    if trainer.rank == 0:
        model.save_pretrained(out / "model")
        if evaluate and stage == 2:
            report.update(evaluate_llava_world(model.eval(), n=eval_n, seed=tcfg.seed, out=out))
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


__all__ = ["train_world_llava", "build_world_llava", "swap_tower", "set_pool_size", "set_crops", "add_image_layout",
           "prepare_stage", "PRESETS", "LORA_TARGETS"]
