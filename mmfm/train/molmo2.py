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
from mmfm.data.molmo2_world import SET_LAYOUTS, WorldVideoData
from mmfm.errors import ConfigError
from mmfm.eval.molmo2_world import evaluate_molmo2_world
from mmfm.lm.frozen_base import after_meta_load, tower_state
from mmfm.lm.model import LanguageModel, as_dtype, load_lm, smollm2_path
from mmfm.models.clip import CLIP
from mmfm.models.llava import Llava
from mmfm.models.molmo2 import Molmo2, Molmo2Config
from mmfm.nn.lora import LoRALinear, apply_lora, merge_lora
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


def build_world_molmo2(vision_dir=None, lm=None, seed: int = 0, lm_dtype: str = "bfloat16", tower=None,
                       **model_kwargs) -> Molmo2:
    """A new Molmo2: a CLIP's vision tower (default: the shipped world CLIP; `tower`: a model with
    `.vision` and `.config.vision / image_mean / image_std` instead), SmolLM2 (frozen) with ten input-only
    embeddings for the vision tokens, and a freshly initialised adapter."""
    clip = tower or mmfm.load(vision_dir or weights_path("clip-world-tiny"))
    if tower is None and not isinstance(clip, CLIP):
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
    if tower is None:
        sd = {"vision.vit." + k[len("vision."):]: t for k, t in tower_state(clip, model.vision.vit).items()}
    else:
        sd = {"vision.vit." + k: t for k, t in tower.vision.state_dict().items()}
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


def add_frame_rows(model: Molmo2, seed: int = 0) -> Molmo2:
    """Give each row of a frame its own column token (Molmo2Config.frame_row_ids): one new input-only
    embedding per row, each the model's column token plus its own random direction of half that
    token's norm, so the rows start apart and the LM keeps reading a column token where it did."""
    c = model.config
    if not c.frame_col_tokens:
        raise ConfigError("a column token per row of a frame needs column tokens in frames (--frame-layout)")
    if c.frame_row_ids:
        return model
    rows = -(-(c.vision.image_size // c.vision.patch_size) // c.adapter.video_pool[0])
    old = model.lm.embed.weight.detach()
    col = old[c.image_col_id].float()
    g = torch.Generator().manual_seed(seed + 1)
    step = torch.randn(rows, old.shape[1], generator=g)
    step = step / step.norm(dim=1, keepdim=True) * 0.5 * col.norm()
    c.frame_row_ids = _append_input_rows(model, col + step)
    return model


def add_frame_index(model: Molmo2, frames: int, scale: float, seed: int = 0, times=None) -> Molmo2:
    """Give the patches of each of `frames` frames their own token (Molmo2Config.frame_index_ids): one new
    input-only embedding per frame, the model's <im_patch> embedding plus a direction of norm `scale` of its
    own: random (nearly orthogonal in the LM's width), or with `times` (a time per frame) the sum of the
    embeddings of the time's text tokens less their mean over the frames, so a frame's patches carry the
    same token vectors as the time a question names. `scale` should be a fair part of a feature's norm
    (frame_index_scale) for the LM to see it beside the feature it is added to. A model that has them keeps
    them."""
    c = model.config
    if c.frame_index_ids:
        return model
    if frames < 1:
        raise ConfigError(f"a patch token per frame needs at least one frame, not {frames}")
    old = model.lm.embed.weight.detach()
    if times is not None:
        if len(times) != frames:
            raise ConfigError(f"{len(times)} times for {frames} frames")
        tok = model._tok()
        step = torch.stack([old[tok.encode_plain(f"{t:.1f}")].float().sum(0) for t in times])
        step = step - step.mean(0)
        if frames == 1 or bool((step.norm(dim=1) == 0).any()):
            raise ConfigError(f"the times {list(times)} do not tell the frames apart")
    else:
        g = torch.Generator().manual_seed(seed + 2)
        step = torch.randn(frames, old.shape[1], generator=g)
    step = step / step.norm(dim=1, keepdim=True) * scale
    c.frame_index_ids = _append_input_rows(model, old[c.image_patch_id].float() + step)
    return model


def _append_input_rows(model: Molmo2, rows: torch.Tensor) -> tuple:
    """Append `rows` (n, width) to the LM's input embedding as extra-vocabulary tokens the prompt may hold
    but the head never writes (the output head is left as it is), trainable as the table was; their ids."""
    old = model.lm.embed.weight.detach()
    embed = nn.Embedding(old.shape[0] + len(rows), old.shape[1], dtype=old.dtype)
    with torch.no_grad():
        embed.weight.copy_(torch.cat([old, rows.to(old.dtype)]))
    embed.weight.requires_grad_(model.lm.embed.weight.requires_grad)
    model.lm.embed = embed
    model.config.lm.extra_vocab += len(rows)
    return tuple(range(old.shape[0], old.shape[0] + len(rows)))


def frame_index_scale(model: Molmo2, data: WorldVideoData, part: float = 0.25) -> float:
    """`part` of the mean norm of the pooled features of the data's first clip (what the LM reads a frame by)."""
    ex = data.example(0)[0]
    with torch.no_grad():
        return part * float(model.encode(ex.patches, ex.pooling).float().norm(dim=1).mean())


def _molmo_llava(model, source):
    if not (isinstance(model, Llava) and model.config.projector == "molmo" and model.config.image_layout):
        raise ConfigError(f"{source}: a world Molmo2 starts from a Molmo2, or from an mmfm LLaVA with Molmo's "
                          "connector and image layout (molmo-world-tiny or one `mmfm train llava --image-layout` "
                          "wrote)")
    return model


def build_from_molmo(source=None, seed: int = 0, lm_dtype: str = "bfloat16", frame_col_tokens: bool = True,
                     **_preset) -> Molmo2:
    """A world Molmo2 that starts where an mmfm LLaVA with Molmo's connector and image layout stands
    (default: the shipped molmo-world-tiny, which points in images): its tower; its connector as the
    adapter (the same attention pooling by the window's mean and SwiGLU, so a frame's tokens are the
    image's tokens); its LM, adapters merged; its layout's start / column / end vectors as the frame start,
    column and end embeddings, and a zero <im_patch> embedding (Molmo2 adds features to it, LLaVA does
    not). The preset's own adapter settings (`_preset`) give way to the LLaVA's."""
    source = source or "molmo-world-tiny"
    llava = _molmo_llava(mmfm.load(source) if not isinstance(source, nn.Module) else source, source)
    c = llava.config
    n = c.vision.layers
    layers = tuple((i if i >= 0 else n + 1 + i) - 1 for i in c.vision_layers)  # LLaVA's 0 is the embedding
    if min(layers) < 0:
        raise ConfigError(f"{source}: Molmo2 pools block outputs; vision_layers {c.vision_layers} reads the embedding")
    merge_lora(llava.lm)
    pool, width = c.pool_size, c.vision.width
    adapter = dict(feature_layers=layers, width=width, heads=c.pool_heads, head_dim=width // c.pool_heads,
                   hidden=c.pool_hidden or 4 * width, image_pool=(pool, pool), video_pool=(pool, pool),
                   attn_bias=True, mlp_bias=False, act="silu")
    lm = LanguageModel(llava.lm.to(as_dtype(lm_dtype)), llava.tokenizer)
    model = build_world_molmo2(lm=lm, seed=seed, lm_dtype=lm_dtype, tower=llava, frame_col_tokens=frame_col_tokens,
                               adapter=adapter)
    p, a, mc = llava.projector, model.adapter, model.config
    with torch.no_grad():
        a.attn.q.load_state_dict(p.q.state_dict())
        a.attn.kv.weight.copy_(torch.cat([p.k.weight, p.v.weight]))  # Attention's kv: keys first
        a.attn.kv.bias.copy_(torch.cat([p.k.bias, p.v.bias]))
        a.attn.out.load_state_dict(p.out.state_dict())
        a.mlp.load_state_dict(p.mlp.state_dict())
        embed = model.lm.embed.weight
        layout = {mc.frame_start_id: 0, mc.frame_end_id: 2} | ({mc.image_col_id: 1} if frame_col_tokens else {})
        for tok, row in layout.items():
            embed[tok] = p.layout[row].to(embed.dtype)
        embed[mc.image_patch_id] = 0
    mc.base_lm = ""  # the merged LM is the model's own: saved with it, whatever trains
    return model


def build_from(source=None, seed: int = 0, lm_dtype: str = "bfloat16", frame_col_tokens: bool = True,
               train_lm: bool = False, bidirectional: bool | None = None, frame_rows: bool = False,
               frame_index: bool = False, **_preset) -> Molmo2:
    """Where a world run starts from `source`: a Molmo2 (mmfm or transformers folder) goes on as it
    stands (a second stage of training; with `train_lm` its LoRA adapters are merged so that every LM
    weight learns; with `frame_rows` it gains a column token per row if it has none); an mmfm LLaVA with
    Molmo's connector and layout goes through build_from_molmo."""
    model = mmfm.load(source or "molmo-world-tiny")
    if not isinstance(model, Molmo2):
        model = build_from_molmo(_molmo_llava(model, source), seed, lm_dtype, frame_col_tokens)
        return add_frame_rows(model, seed) if frame_rows else model
    c = model.config
    if c.frame_col_tokens != frame_col_tokens:
        raise ConfigError(f"{source}: this Molmo2 was trained {'with' if c.frame_col_tokens else 'without'} column "
                          f"tokens in frames; {'give' if c.frame_col_tokens else 'leave out'} --frame-layout")
    if c.frame_row_ids and not frame_rows:
        raise ConfigError(f"{source}: this Molmo2 has a column token per row of a frame; give --frame-rows")
    if c.frame_index_ids and not frame_index:
        raise ConfigError(f"{source}: this Molmo2 has a patch token per frame; give --frame-index")
    if bidirectional is not None and c.bidirectional_vision != bidirectional:
        how, switch = ("both ways", "leave out") if c.bidirectional_vision else ("causally", "give")
        raise ConfigError(f"{source}: this Molmo2's vision tokens attend {how}; {switch} --causal-vision to go on "
                          "as it was trained")
    if model.tokenizer is None:
        raise ConfigError(f"{source}: the Molmo2 has no tokenizer (tokenizer.json in its folder)")
    if train_lm and c.lora:
        merge_lora(model.lm)
        c.lora = None
    if frame_rows:
        add_frame_rows(model, seed)
    model.lm.to(as_dtype(lm_dtype))  # the frozen part in the run's precision; prepare makes learners fp32
    return model


def prepare(model: Molmo2, lora: dict | None, lm_lr_scale: float = 1.0, tower_lr_scale: float = 0.0) -> int:
    """Freeze the tower (unless `tower_lr_scale` > 0: then it learns at that share of the lr, as Molmo trains
    its ViT, its BatchNorm statistics kept; Molmo2.train); the adapter learns, and LoRA adapters on the LM
    (`lora`: added unless the model has its own) or, with `lora=None` and no adapters, the whole LM (at
    `lm_lr_scale` of the lr). Trainable weights in fp32; returns their number."""
    model.requires_grad_(False)
    if lora and not model.config.lora:
        apply_lora(model.lm, lora["targets"], r=lora["r"], alpha=lora["alpha"])
        model.config.lora = {"r": lora["r"], "alpha": lora["alpha"], "targets": list(lora["targets"])}
    model.adapter.requires_grad_(True)
    if tower_lr_scale > 0:
        model.vision.requires_grad_(True)
        for p in model.vision.parameters():
            p.lr_scale = tower_lr_scale
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
                       frame_layout: bool = False, tasks: tuple[str, ...] | None = None, start=None,
                       frame_rows: bool = False, frame_index: int = 0, frame_index_init: str = "random",
                       stills: int = 0, sets: int = 0, frame_stills: int = 0, entering: int = 0,
                       grey: float = 0.0, tower_lr_scale: float = 0.0, eval_sets: int = 0,
                       set_layouts: tuple[str, ...] = SET_LAYOUTS, **overrides) -> dict:
    """`train_lm`: every LM weight learns (at LM_LR_SCALE of the lr) instead of LoRA adapters;
    `frame_layout`: a column token after each row of a frame's patches (Molmo2Config.frame_col_tokens);
    `frame_rows`: with it, a distinct column token for each row (Molmo2Config.frame_row_ids, add_frame_rows);
    `frame_index`: that many frames get their own patch token (Molmo2Config.frame_index_ids, add_frame_index;
    0: none), their directions `frame_index_init` "random" or "time" (the frames' timestamp tokens);
    `tasks`: train on these task kinds only (mmfm.world.video.video_tasks; the evaluation asks every kind;
    `()`: no clips, the stills alone);
    `stills`: that many world scenes per batch as one-frame videos with point questions (WorldVideoData.still);
    `frame_stills`: that many single frames of clips per batch, "Point to every <shape>." (WorldVideoData.frame_still);
    `entering`: K - 1 of every K of them one frame after an object of their clip entered (0: off);
    `grey`: that share of them drawn in grey; `tower_lr_scale` > 0: the vision tower learns at that share of the lr;
    `sets`: that many world image sets per batch, in `set_layouts` in turn (WorldVideoData.set_example);
    `eval_sets`: image sets per split in the evaluation;
    `start`: a Molmo2 to train further, or an mmfm LLaVA with Molmo's connector to start from
    (build_from_molmo; "molmo-world-tiny" for the shipped one)."""
    p = preset(preset_name)
    tcfg = TrainConfig(**p["train"]).update(**overrides)
    tcfg.progress = progress
    out = Path(out)
    t0 = time.perf_counter()
    if start is None:
        model = build_world_molmo2(seed=tcfg.seed, lm_dtype=lm_dtype(tcfg.precision), frame_col_tokens=frame_layout,
                                   **p["model"])
        model = add_frame_rows(model, tcfg.seed) if frame_rows else model
    else:
        model = build_from(start, seed=tcfg.seed, lm_dtype=lm_dtype(tcfg.precision), frame_col_tokens=frame_layout,
                           train_lm=train_lm, bidirectional=bidirectional, frame_rows=frame_rows,
                           frame_index=frame_index > 0, **p["model"])
    if frame_index and not model.config.frame_index_ids:
        probe = WorldVideoData(model, model.tokenizer, seed=tcfg.seed, **p["data"])
        times = [probe.clip(0).time(k) for k in range(frame_index)] if frame_index_init == "time" else None
        add_frame_index(model, frame_index, frame_index_scale(model, probe), tcfg.seed, times)
    trainable = prepare(model, None if train_lm else p["lora"], LM_LR_SCALE, tower_lr_scale)
    model.config.bidirectional_vision = bidirectional  # the model is asked as it was trained
    data = WorldVideoData(model, model.tokenizer, seed=tcfg.seed, batch_size=tcfg.batch_size, packed=packed,
                          weighting=weighting, tasks=tasks, stills=stills, sets=sets, frame_stills=frame_stills,
                          entering=entering, grey=grey, set_layouts=set_layouts, **p["data"])
    source = data if bidirectional else CausalVisionData(data)
    trainer = Trainer(Molmo2TrainModule(model), tcfg, lambda s, m, r, w: source.batch(s, m, r, w, tcfg.accum), out)
    trainer.train(resume=resume)
    report = {"preset": preset_name, "trainable_parameters": trainable, "packed": packed, "weighting": weighting,
              "bidirectional": bidirectional, "train_lm": train_lm, "frame_layout": frame_layout,
              "frame_rows": frame_rows, "frame_index": len(model.config.frame_index_ids), "stills": stills,
              "frame_stills": frame_stills, "entering": entering, "grey": grey,
              "tower_lr_scale": tower_lr_scale, "sets": sets, "set_layouts": list(set_layouts),
              "tasks": None if tasks is None else list(tasks), "start": None if start is None else str(start),
              "train_seconds": round(time.perf_counter() - t0, 1),
              "train_config": {k: getattr(tcfg, k) for k in ("steps", "batch_size", "lr", "seed")}}
    if trainer.rank == 0:
        model.save_pretrained(out / "model")
        if evaluate:
            every = WorldVideoData(model, model.tokenizer, seed=tcfg.seed, **p["data"])  # every task kind
            report.update(evaluate_molmo2_world(model.eval(), every, n=eval_n, out=out, progress=progress,
                                                sets=eval_sets))
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


__all__ = ["train_world_molmo2", "build_world_molmo2", "build_from", "build_from_molmo", "add_frame_rows",
           "add_frame_index", "frame_index_scale", "prepare", "PRESETS"]
