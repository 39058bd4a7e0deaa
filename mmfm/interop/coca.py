"""open_clip CoCa checkpoints (the coca_ViT-* family: a state dict + its model config) <-> mmfm's CoCa."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from mmfm.checkpoint import load_state_dict, load_strict, save_safetensors
from mmfm.errors import CheckpointError
from mmfm.interop.open_clip import read_open_clip_checkpoint
from mmfm.models.coca import CoCa, CoCaConfig


def config_from_open_clip(cfg: dict, quick_gelu: bool = False) -> CoCaConfig:
    """open_clip's model config (embed_dim, vision_cfg, text_cfg, multimodal_cfg) -> CoCaConfig."""
    v, t, m = cfg["vision_cfg"], cfg["text_cfg"], cfg["multimodal_cfg"]
    if not v.get("attentional_pool"):
        raise CheckpointError("not a CoCa config: vision_cfg.attentional_pool is not set")
    if isinstance(v.get("attentional_pool"), str):
        raise CheckpointError("open_clip's WIP 'parallel'/'cascade' poolers are not supported; use pooler='separate'")
    if m.get("width", t["width"]) != t["width"] or cfg["embed_dim"] != m.get("width", t["width"]):
        raise CheckpointError("open_clip CoCa needs embed_dim == text width == multimodal width")
    act = "quick_gelu" if quick_gelu or cfg.get("quick_gelu") else "gelu"
    width = v["width"]
    heads = v.get("heads") or width // v.get("head_width", 64)
    mlp = lambda w, r: int(w * r)  # noqa: E731
    return CoCaConfig(
        embed_dim=cfg["embed_dim"],
        vision=dict(
            image_size=v["image_size"],
            patch_size=v["patch_size"],
            width=width,
            layers=v["layers"],
            heads=heads,
            mlp_dim=mlp(width, v.get("mlp_ratio", 4.0)),
            act=act,
        ),
        text=dict(
            vocab_size=t["vocab_size"],
            context_length=t["context_length"],
            width=t["width"],
            layers=t["layers"],
            heads=t["heads"],
            mlp_dim=mlp(t["width"], t.get("mlp_ratio", 4.0)),
            act=act,
            pad_token_id=t.get("pad_id", 0),
        ),
        decoder=dict(
            layers=m["layers"], heads=m["heads"], mlp_dim=mlp(m.get("width", t["width"]), m.get("mlp_ratio", 4))
        ),
        pooler="single",
        pooler_queries=v.get("attn_pooler_queries", 256),
        pooler_heads=v.get("attn_pooler_heads", 8),
        legacy_cls_mask=not t.get("correct_cls_mask", False),
    )


def _block(prefix_in: str, prefix_out: str, sd: dict, out: dict, cross: bool = False) -> None:
    w = sd[prefix_in + "attn.in_proj_weight"]
    b = sd[prefix_in + "attn.in_proj_bias"]
    d = w.shape[1]
    if cross:
        out[prefix_out + "attn.q.weight"], out[prefix_out + "attn.kv.weight"] = w[:d], w[d:]
        out[prefix_out + "attn.q.bias"], out[prefix_out + "attn.kv.bias"] = b[:d], b[d:]
        out[prefix_out + "norm_q.weight"], out[prefix_out + "norm_q.bias"] = (
            sd[prefix_in + "ln_1.weight"],
            sd[prefix_in + "ln_1.bias"],
        )
        out[prefix_out + "norm_kv.weight"], out[prefix_out + "norm_kv.bias"] = (
            sd[prefix_in + "ln_1_kv.weight"],
            sd[prefix_in + "ln_1_kv.bias"],
        )
    else:
        out[prefix_out + "attn.qkv.weight"], out[prefix_out + "attn.qkv.bias"] = w, b
        out[prefix_out + "norm1.weight"], out[prefix_out + "norm1.bias"] = (
            sd[prefix_in + "ln_1.weight"],
            sd[prefix_in + "ln_1.bias"],
        )
    out[prefix_out + "attn.out.weight"], out[prefix_out + "attn.out.bias"] = (
        sd[prefix_in + "attn.out_proj.weight"],
        sd[prefix_in + "attn.out_proj.bias"],
    )
    out[prefix_out + "norm2.weight"], out[prefix_out + "norm2.bias"] = (
        sd[prefix_in + "ln_2.weight"],
        sd[prefix_in + "ln_2.bias"],
    )
    for a, b2 in (("c_fc", "fc1"), ("c_proj", "fc2")):
        out[f"{prefix_out}mlp.{b2}.weight"] = sd[f"{prefix_in}mlp.{a}.weight"]
        out[f"{prefix_out}mlp.{b2}.bias"] = sd[f"{prefix_in}mlp.{a}.bias"]


def from_open_clip(sd: dict) -> dict:
    """open_clip CoCa state dict -> mmfm CoCa state dict."""
    try:
        out = {
            "logit_scale": sd["logit_scale"],
            "visual.patch_embed.weight": sd["visual.conv1.weight"],
            "visual.class_token": sd["visual.class_embedding"],
            "visual.pos_embed": sd["visual.positional_embedding"],
            "visual.ln_pre.weight": sd["visual.ln_pre.weight"],
            "visual.ln_pre.bias": sd["visual.ln_pre.bias"],
            "ln_post.weight": sd["visual.ln_post.weight"],
            "ln_post.bias": sd["visual.ln_post.bias"],
            "proj.weight": sd["visual.proj"].t(),
            "attn_pool.query": sd["visual.attn_pool.query"],
            "attn_pool.ln_q.weight": sd["visual.attn_pool.ln_q.weight"],
            "attn_pool.ln_q.bias": sd["visual.attn_pool.ln_q.bias"],
            "attn_pool.ln_k.weight": sd["visual.attn_pool.ln_k.weight"],
            "attn_pool.ln_k.bias": sd["visual.attn_pool.ln_k.bias"],
            "attn_pool.attn.out.weight": sd["visual.attn_pool.attn.out_proj.weight"],
            "attn_pool.attn.out.bias": sd["visual.attn_pool.attn.out_proj.bias"],
            "text.token_embed.weight": sd["text.token_embedding.weight"],
            "text.pos_embed": sd["text.positional_embedding"],
            "text.cls_embed": sd["text.cls_emb"],
            "text.ln_final.weight": sd["text.ln_final.weight"],
            "text.ln_final.bias": sd["text.ln_final.bias"],
            "text.proj.weight": sd["text.text_projection"].t(),
            "decoder_norm.weight": sd["text_decoder.ln_final.weight"],
            "decoder_norm.bias": sd["text_decoder.ln_final.bias"],
            "lm_head.weight": sd["text_decoder.text_projection"].t(),
        }
        p = "visual.attn_pool.attn."
        dq = sd["visual.attn_pool.query"].shape[1]
        bias = sd[p + "in_proj_bias"]
        if p + "in_proj_weight" in sd:
            w = sd[p + "in_proj_weight"]
            out["attn_pool.attn.q.weight"], out["attn_pool.attn.kv.weight"] = w[:dq], w[dq:]
        else:
            out["attn_pool.attn.q.weight"] = sd[p + "q_proj_weight"]
            out["attn_pool.attn.kv.weight"] = torch.cat([sd[p + "k_proj_weight"], sd[p + "v_proj_weight"]])
        out["attn_pool.attn.q.bias"], out["attn_pool.attn.kv.bias"] = bias[:dq], bias[dq:]
        for tower, prefix in (("visual", "visual.transformer.resblocks."), ("text", "text.transformer.resblocks.")):
            for i in sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}):
                _block(f"{prefix}{i}.", f"{tower}.transformer.blocks.{i}.", sd, out)
        for i in sorted({int(k.split(".")[2]) for k in sd if k.startswith("text_decoder.resblocks.")}):
            _block(f"text_decoder.resblocks.{i}.", f"decoder_blocks.{i}.", sd, out)
            _block(f"text_decoder.cross_attn.{i}.", f"decoder_cross.{i}.", sd, out, cross=True)
    except KeyError as e:
        raise CheckpointError(f"not an open_clip CoCa state dict: missing {e}") from e
    unused = [k for k in sd if re.match(r"visual\.attn_pool_contrastive\.", k)]
    if unused:
        raise CheckpointError("open_clip's WIP two-pooler CoCa layout is not supported")
    return out


def _block_back(prefix_in: str, prefix_out: str, sd: dict, out: dict, cross: bool = False) -> None:
    """The inverse of `_block`: mmfm block keys -> open_clip resblock keys."""
    if cross:
        out[prefix_out + "attn.in_proj_weight"] = torch.cat(
            [sd[prefix_in + "attn.q.weight"], sd[prefix_in + "attn.kv.weight"]]
        )
        out[prefix_out + "attn.in_proj_bias"] = torch.cat(
            [sd[prefix_in + "attn.q.bias"], sd[prefix_in + "attn.kv.bias"]]
        )
        for a, b in (("ln_1", "norm_q"), ("ln_1_kv", "norm_kv")):
            out[f"{prefix_out}{a}.weight"], out[f"{prefix_out}{a}.bias"] = (
                sd[f"{prefix_in}{b}.weight"],
                sd[f"{prefix_in}{b}.bias"],
            )
    else:
        out[prefix_out + "attn.in_proj_weight"], out[prefix_out + "attn.in_proj_bias"] = (
            sd[prefix_in + "attn.qkv.weight"],
            sd[prefix_in + "attn.qkv.bias"],
        )
        out[prefix_out + "ln_1.weight"], out[prefix_out + "ln_1.bias"] = (
            sd[prefix_in + "norm1.weight"],
            sd[prefix_in + "norm1.bias"],
        )
    out[prefix_out + "attn.out_proj.weight"], out[prefix_out + "attn.out_proj.bias"] = (
        sd[prefix_in + "attn.out.weight"],
        sd[prefix_in + "attn.out.bias"],
    )
    out[prefix_out + "ln_2.weight"], out[prefix_out + "ln_2.bias"] = (
        sd[prefix_in + "norm2.weight"],
        sd[prefix_in + "norm2.bias"],
    )
    for a, b in (("c_fc", "fc1"), ("c_proj", "fc2")):
        out[f"{prefix_out}mlp.{a}.weight"] = sd[f"{prefix_in}mlp.{b}.weight"]
        out[f"{prefix_out}mlp.{a}.bias"] = sd[f"{prefix_in}mlp.{b}.bias"]


def to_open_clip(sd: dict) -> dict:
    """mmfm CoCa state dict (open_clip's single-pooler layout, patch stem) -> open_clip CoCa state dict."""
    if any(k.startswith("attn_pool_contrastive.") for k in sd) or "visual.patch_embed.weight" not in sd:
        raise CheckpointError("only the single-pooler, patch-stem CoCa has an open_clip layout")
    renamed = {
        "logit_scale": "logit_scale",
        "visual.patch_embed.weight": "visual.conv1.weight",
        "visual.class_token": "visual.class_embedding",
        "visual.pos_embed": "visual.positional_embedding",
        "visual.ln_pre.weight": "visual.ln_pre.weight",
        "visual.ln_pre.bias": "visual.ln_pre.bias",
        "ln_post.weight": "visual.ln_post.weight",
        "ln_post.bias": "visual.ln_post.bias",
        "attn_pool.query": "visual.attn_pool.query",
        "attn_pool.ln_q.weight": "visual.attn_pool.ln_q.weight",
        "attn_pool.ln_q.bias": "visual.attn_pool.ln_q.bias",
        "attn_pool.ln_k.weight": "visual.attn_pool.ln_k.weight",
        "attn_pool.ln_k.bias": "visual.attn_pool.ln_k.bias",
        "attn_pool.attn.out.weight": "visual.attn_pool.attn.out_proj.weight",
        "attn_pool.attn.out.bias": "visual.attn_pool.attn.out_proj.bias",
        "text.token_embed.weight": "text.token_embedding.weight",
        "text.pos_embed": "text.positional_embedding",
        "text.cls_embed": "text.cls_emb",
        "text.ln_final.weight": "text.ln_final.weight",
        "text.ln_final.bias": "text.ln_final.bias",
        "decoder_norm.weight": "text_decoder.ln_final.weight",
        "decoder_norm.bias": "text_decoder.ln_final.bias",
    }
    out = {theirs: sd[ours] for ours, theirs in renamed.items()}
    out["visual.proj"] = sd["proj.weight"].t().contiguous()
    out["text.text_projection"] = sd["text.proj.weight"].t().contiguous()
    out["text_decoder.text_projection"] = sd["lm_head.weight"].t().contiguous()
    q, kv = sd["attn_pool.attn.q.weight"], sd["attn_pool.attn.kv.weight"]
    if q.shape[1] == kv.shape[1]:
        out["visual.attn_pool.attn.in_proj_weight"] = torch.cat([q, kv])
    else:  # torch's MultiheadAttention keeps separate projections when the key width differs
        p = "visual.attn_pool.attn."
        out[p + "q_proj_weight"], (out[p + "k_proj_weight"], out[p + "v_proj_weight"]) = q, kv.chunk(2)
    out["visual.attn_pool.attn.in_proj_bias"] = torch.cat([sd["attn_pool.attn.q.bias"], sd["attn_pool.attn.kv.bias"]])
    for tower, prefix in (("visual", "visual.transformer.resblocks."), ("text", "text.transformer.resblocks.")):
        mine = f"{tower}.transformer.blocks."
        for i in sorted({int(k[len(mine):].split(".")[0]) for k in sd if k.startswith(mine)}):
            _block_back(f"{mine}{i}.", f"{prefix}{i}.", sd, out)
    for i in sorted({int(k.split(".")[1]) for k in sd if k.startswith("decoder_blocks.")}):
        _block_back(f"decoder_blocks.{i}.", f"text_decoder.resblocks.{i}.", sd, out)
        _block_back(f"decoder_cross.{i}.", f"text_decoder.cross_attn.{i}.", sd, out, cross=True)
    return out


def config_to_open_clip(c) -> dict:
    """CoCaConfig -> open_clip's model config (the coca_* JSON layout)."""
    v, t, d = c.vision, c.text, c.decoder
    if c.pooler != "single" or v.stem != "patch":
        raise CheckpointError("only the single-pooler, patch-stem CoCa has an open_clip layout")
    if not c.legacy_cls_mask:
        raise CheckpointError(
            "open_clip's CoCa config has no switch for the corrected CLS mask (legacy_cls_mask=False)"
        )
    return {"embed_dim": c.embed_dim, "quick_gelu": t.act == "quick_gelu",
            "vision_cfg": {"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width, "layers": v.layers,
                           "head_width": v.width // v.heads, "mlp_ratio": v.mlp_dim / v.width if v.mlp_dim else 4.0,
                           "attentional_pool": True, "attn_pooler_queries": c.pooler_queries,
                           "attn_pooler_heads": c.pooler_heads, "output_tokens": True},
            "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                         "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_dim / t.width if t.mlp_dim else 4.0,
                         "embed_cls": True, "output_tokens": True, "pad_id": t.pad_token_id},
            "multimodal_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                               "heads": d.heads, "layers": d.layers,
                               "mlp_ratio": (d.mlp_dim or 4 * t.width) / t.width}}


def load_open_clip_coca(path: Path, config: dict | str | Path | None = None, sd: dict | None = None):
    """A folder with open_clip_config.json (+ open_clip_model.safetensors / open_clip_pytorch_model.bin),
    or a state-dict file with its model config given as `config` (`sd`: its tensors, if read already)."""
    oc, _, weights = read_open_clip_checkpoint(path, config)
    model = CoCa(config_from_open_clip(oc))
    load_strict(model, from_open_clip(load_state_dict(weights) if sd is None else sd), str(path))
    return model


def save_open_clip_coca(model, folder) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    cfg = {"model_cfg": config_to_open_clip(c),
           "preprocess_cfg": {"mean": list(c.image_mean), "std": list(c.image_std), "interpolation": "bicubic",
                              "resize_mode": "shortest"}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    save_safetensors(to_open_clip(model.state_dict()), folder / "open_clip_model.safetensors")
    return folder
