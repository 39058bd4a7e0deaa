"""Training CoCa on the Shapes world: CLIP's data cache and schedule (so the two compare at the same
budget), the CoCa loss (contrastive x 1 + captioning x 2), and the `world-tiny` recipe.

The captions are CLIP's: each scene's caption of the step is drawn from its captions of varied
granularity, and the same text feeds the contrastive CLS and the captioning decoder (as in the paper,
one text tower serves both)."""

from __future__ import annotations

import torch
from torch import nn

from mmfm.models.coca import CoCa, CoCaConfig
from mmfm.text.tokenizer import CLIPTokenizer
from mmfm.train.clip import WorldCLIPData
from mmfm.train.trainer import TrainConfig


def world_tiny_config(stem: str = "conv") -> CoCaConfig:
    """The world-tiny CLIP's towers + a 2-layer multimodal decoder reading 32 pooled image tokens."""
    tok = CLIPTokenizer.world()
    return CoCaConfig(
        embed_dim=128,
        vision=dict(image_size=64, patch_size=8, width=96, layers=4, heads=3, stem=stem),
        text=dict(vocab_size=tok.vocab_size, context_length=24, width=96, layers=2, heads=3,
                  sot_token_id=tok.sot_token_id, eot_token_id=tok.eot_token_id, pad_token_id=0),
        decoder=dict(layers=2, heads=3),
        pooler="single", pooler_queries=33, pooler_heads=4,
        legacy_cls_mask=False,  # our own weights: the CLS attends to the real tokens only
        tokenizer="world",
    )


PRESETS = {
    # the world-tiny CLIP's schedule and data, so that zero-shot compares at the same budget
    "world-tiny": dict(
        model=world_tiny_config,
        train=dict(steps=800, batch_size=256, lr=1.5e-3, weight_decay=0.1, warmup=80, min_lr=1e-5),
        scenes=24_000, max_objects=4,
    ),
}


class CoCaTrainModule(nn.Module):
    def __init__(self, model: CoCa):
        super().__init__()
        self.model = model

    def forward(self, batch: dict):
        out = self.model(batch["pixels"], batch["input_ids"])
        loss, parts = self.model.loss(out)
        return loss, {**parts, "logit_scale": out.logit_scale.detach()}


def preset(name: str) -> tuple[CoCaConfig, TrainConfig, dict]:
    from mmfm.train.trainer import split_preset

    model, train, extra = split_preset(PRESETS, name, "CoCa")
    return model(), train, extra


def train_world_coca(preset_name: str = "world-tiny", out="runs/coca", resume: bool = False, progress: bool = True,
                     scenes: int | None = None, evaluate: bool = True, eval_n: int = 500, **overrides) -> dict:
    """Train a CoCa on the world (overrides: any TrainConfig field), save `out/model`, and write
    `out/report.json`: captioning (BLEU-4, CIDEr-D on new scenes of seen and of held-out compositions)
    and zero-shot top-1 as for CLIP."""
    import json
    import time
    from pathlib import Path

    from mmfm.train.trainer import Trainer

    config, tcfg, extra = preset(preset_name)
    tcfg.update(**overrides)
    tcfg.progress = progress
    out = Path(out)
    t0 = time.perf_counter()
    data = WorldCLIPData.build(config, scenes or extra["scenes"], tcfg.batch_size, seed=tcfg.seed,
                               max_objects=extra["max_objects"], progress=progress)
    torch.manual_seed(tcfg.seed)
    model = CoCa(config)
    model.tokenizer = CLIPTokenizer.world(context_length=config.text.context_length)
    trainer = Trainer(CoCaTrainModule(model), tcfg, lambda s, m, r, w: data.batch(s, m, r, w, tcfg.accum), out)
    trainer.train(resume=resume)
    report = {"preset": preset_name, "train_seconds": round(time.perf_counter() - t0, 1),
              "train_config": {k: getattr(tcfg, k) for k in ("steps", "batch_size", "lr", "seed")}}
    if trainer.rank == 0:
        model.save_pretrained(out / "model")
        if evaluate:
            from mmfm.eval.coca_world import evaluate_coca_world

            report.update(evaluate_coca_world(model.eval(), n=eval_n, seed=tcfg.seed))
            report["total_seconds"] = round(time.perf_counter() - t0, 1)
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
