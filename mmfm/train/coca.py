"""Training CoCa on the Shapes world: CLIP's data cache and schedule (so the two compare at the same
budget), the CoCa loss (contrastive x 1 + captioning x 2), and the `world-tiny` recipe.

The captions are CLIP's: each scene's caption of the step is drawn from its captions of varied
granularity, and the same text feeds the contrastive CLS and the captioning decoder (as in the paper,
one text tower serves both)."""

from __future__ import annotations

from torch import nn

from mmfm.eval.coca_world import evaluate_coca_world
from mmfm.models.coca import CoCa, CoCaConfig
from mmfm.train.clip import WORLD_TINY_DATA, WORLD_TINY_TRAIN, train_world_contrastive, world_towers
from mmfm.train.trainer import TrainConfig, split_preset


def world_tiny_config(stem: str = "conv") -> CoCaConfig:
    """The world-tiny CLIP's towers + a 2-layer multimodal decoder reading 32 pooled image tokens."""
    vision, text = world_towers(stem)
    return CoCaConfig(
        embed_dim=128, vision=vision, text=text, decoder=dict(layers=2, heads=3),
        pooler="single", pooler_queries=33, pooler_heads=4,
        legacy_cls_mask=False,  # our own weights: the CLS attends to the real tokens only
        tokenizer="world",
    )


PRESETS = {"world-tiny": dict(model=world_tiny_config, train=WORLD_TINY_TRAIN, **WORLD_TINY_DATA)}


class CoCaTrainModule(nn.Module):
    def __init__(self, model: CoCa):
        super().__init__()
        self.model = model

    def forward(self, batch: dict):
        out = self.model(batch["pixels"], batch["input_ids"])
        loss, parts = self.model.loss(out)
        return loss, {**parts, "logit_scale": out.logit_scale.detach()}


def preset(name: str) -> tuple[CoCaConfig, TrainConfig, dict]:
    model, train, extra = split_preset(PRESETS, name, "CoCa")
    return model(), train, extra


def train_world_coca(preset_name: str = "world-tiny", out="runs/coca", resume: bool = False, progress: bool = True,
                     scenes: int | None = None, evaluate: bool = True, eval_n: int = 500,
                     caption_loss_weight: float | None = None, **overrides) -> dict:
    """Train a CoCa on the world (overrides: any TrainConfig field), save `out/model`, and write
    `out/report.json`: captioning (BLEU-4, CIDEr-D on new scenes of seen and of held-out compositions)
    and zero-shot top-1 as for CLIP. `caption_loss_weight` 0 is the ablation that trains the same
    architecture contrastively only (does captioning cost zero-shot?)."""
    config, tcfg, extra = preset(preset_name)
    if caption_loss_weight is not None:
        config.caption_loss_weight = caption_loss_weight
    return train_world_contrastive(
        preset_name, CoCa, CoCaTrainModule, config, tcfg.update(**overrides), extra, out, resume=resume,
        progress=progress, scenes=scenes,
        evaluate=(lambda model, seed: evaluate_coca_world(model, n=eval_n, seed=seed)) if evaluate else None,
    )
