"""transformers' CLIPModel <-> mmfm CLIP: config and state-dict mapping, both directions.

Differences handled here: HF keeps q/k/v projections apart (we fuse them), calls the vision pre-norm
`pre_layrnorm`, stores position embeddings as nn.Embedding, and pools text at the first eos_token_id
except in legacy configs whose eos_token_id is 2, which pool at the argmax id (= vocab_size - 1)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmfm.checkpoint import load_folder_weights, load_strict, read_json, save_safetensors
from mmfm.errors import CheckpointError, ConfigError
from mmfm.models.clip import CLIP, CLIPConfig, apply_overrides

_BLOCK = {"layer_norm1": "norm1", "layer_norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
          "self_attn.out_proj": "attn.out"}
_TOP = {
    "vision_model.embeddings.patch_embedding.weight": "visual.patch_embed.weight",
    "vision_model.embeddings.class_embedding": "visual.class_token",
    "vision_model.embeddings.position_embedding.weight": "visual.pos_embed",
    "vision_model.pre_layrnorm": "visual.ln_pre",
    "vision_model.post_layernorm": "visual.ln_post",
    "visual_projection.weight": "visual.proj.weight",
    "text_model.embeddings.token_embedding.weight": "text.token_embed.weight",
    "text_model.embeddings.position_embedding.weight": "text.pos_embed",
    "text_model.final_layer_norm": "text.ln_final",
    "text_projection.weight": "text.proj.weight",
    "logit_scale": "logit_scale",
}
_TOWERS = {
    "vision_model.encoder.layers": "visual.transformer.blocks",
    "text_model.encoder.layers": "text.transformer.blocks",
}


def config_from_hf(hf: dict, preprocessor: dict | None = None) -> dict:
    """HF CLIPConfig dict -> mmfm CLIPConfig dict."""
    try:
        v, t = hf["vision_config"], hf["text_config"]
        eps = {v.get("layer_norm_eps", 1e-5), t.get("layer_norm_eps", 1e-5)}
        if len(eps) != 1:
            raise CheckpointError(f"towers use different layer_norm_eps {sorted(eps)}; mmfm CLIP uses one")
        vocab = t["vocab_size"]
        eos = t.get("eos_token_id", 49407)
        legacy = eos == 2  # transformers pools these at argmax(input_ids): the highest id, EOT
        eot = vocab - 1 if legacy else eos
        bos = t.get("bos_token_id", 49406)
        if legacy and bos >= vocab:
            bos = vocab - 2
        cfg = {
            "model_type": "mmfm-clip",
            "embed_dim": hf.get("projection_dim", 512),
            "vision": {"image_size": v["image_size"], "patch_size": v["patch_size"], "width": v["hidden_size"],
                       "layers": v["num_hidden_layers"], "heads": v["num_attention_heads"],
                       "mlp_dim": v["intermediate_size"], "act": v.get("hidden_act", "quick_gelu")},
            "text": {"vocab_size": vocab, "context_length": t["max_position_embeddings"], "width": t["hidden_size"],
                     "layers": t["num_hidden_layers"], "heads": t["num_attention_heads"],
                     "mlp_dim": t["intermediate_size"], "act": t.get("hidden_act", "quick_gelu"),
                     "sot_token_id": bos, "eot_token_id": eot, "pad_token_id": t.get("pad_token_id", 1)},
            "norm_eps": eps.pop(),
            "init_logit_scale": hf.get("logit_scale_init_value", 2.6592),
            "crop_rounding": "floor",
        }
    except KeyError as e:
        raise CheckpointError(f"HF CLIP config is missing {e}") from e
    for tower in ("vision", "text"):
        if cfg[tower]["act"] not in ("gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise CheckpointError(f"unsupported hidden_act {cfg[tower]['act']!r} in the {tower} tower")
        if cfg[tower]["act"] in ("gelu_new", "gelu_pytorch_tanh"):
            cfg[tower]["act"] = "gelu_tanh"
    if preprocessor:
        cfg["image_mean"] = preprocessor.get("image_mean", cfg.get("image_mean"))
        cfg["image_std"] = preprocessor.get("image_std", cfg.get("image_std"))
    return {k: v for k, v in cfg.items() if v is not None}


def config_to_hf(c) -> dict:
    act = {"gelu_tanh": "gelu_pytorch_tanh"}
    v, t = c.vision, c.text
    return {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": c.embed_dim,
        "logit_scale_init_value": c.init_logit_scale,
        "vision_config": {"model_type": "clip_vision_model", "image_size": v.image_size, "patch_size": v.patch_size,
                          "hidden_size": v.width, "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
                          "intermediate_size": v.mlp_dim or 4 * v.width, "hidden_act": act.get(v.act, v.act),
                          "layer_norm_eps": c.norm_eps, "projection_dim": c.embed_dim},
        "text_config": {"model_type": "clip_text_model", "vocab_size": t.vocab_size,
                        "max_position_embeddings": t.context_length, "hidden_size": t.width,
                        "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
                        "intermediate_size": t.mlp_dim or 4 * t.width, "hidden_act": act.get(t.act, t.act),
                        "layer_norm_eps": c.norm_eps, "bos_token_id": t.sot_token_id, "eos_token_id": t.eot_token_id,
                        "pad_token_id": t.pad_token_id, "projection_dim": c.embed_dim},
    }


def state_dict_from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue  # a buffer older transformers saved
        new = _map_top(k)
        if new is None:
            for hf_prefix, ours in _TOWERS.items():
                if k.startswith(hf_prefix + "."):
                    idx, rest = k[len(hf_prefix) + 1 :].split(".", 1)
                    sub, _, kind = rest.rpartition(".")
                    if sub in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                        letter = sub.split(".")[1][0]  # "self_attn.q_proj" -> "q"
                        qkv.setdefault(f"{ours}.{idx}.attn.qkv.{kind}", {})[letter] = v
                        new = ""
                    elif sub in _BLOCK:
                        new = f"{ours}.{idx}.{_BLOCK[sub]}.{kind}"
        if new is None:
            raise CheckpointError(f"unexpected key in the HF CLIP checkpoint: {k}")
        if new:
            out[new] = v
    for k, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"incomplete q/k/v projections for {k}")
        out[k] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out


def _map_top(k: str) -> str | None:
    for hf, ours in _TOP.items():
        if k == hf:
            return ours
        if k.startswith(hf + "."):
            return ours + k[len(hf) :]
    return None


def state_dict_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inv_top = {v: k for k, v in _TOP.items()}
    inv_block = {v: k for k, v in _BLOCK.items()}
    out = {}
    for k, v in sd.items():
        done = False
        for ours, hf in ((o, h) for h, o in _TOWERS.items()):
            if k.startswith(ours + "."):
                idx, rest = k[len(ours) + 1 :].split(".", 1)
                sub, _, kind = rest.rpartition(".")
                if sub == "attn.qkv":
                    for name, part in zip("qkv", v.chunk(3, 0)):
                        out[f"{hf}.{idx}.self_attn.{name}_proj.{kind}"] = part.clone()
                else:
                    out[f"{hf}.{idx}.{inv_block[sub]}.{kind}"] = v
                done = True
        if done:
            continue
        for ours, hf in inv_top.items():
            if k == ours or k.startswith(ours + "."):
                out[hf + k[len(ours) :]] = v
                done = True
                break
        if not done:
            raise ConfigError(f"no HF name for {k}")
    return out


def load_hf(folder: Path, **overrides):
    hf = read_json(folder / "config.json")
    pre = read_json(folder / "preprocessor_config.json") if (folder / "preprocessor_config.json").is_file() else None
    cfg = apply_overrides(config_from_hf(hf, pre), overrides, str(folder))
    try:
        config = CLIPConfig.from_dict(cfg)
    except ConfigError as e:
        raise CheckpointError(f"{folder}: {e}") from e
    model = CLIP(config)
    load_strict(model, state_dict_from_hf(load_folder_weights(folder)), str(folder))
    return model


def preprocessor_config(image_size: int, mean, std) -> dict:
    """transformers' CLIPImageProcessor settings for CLIP's preprocessing at `image_size`."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(mean),
        "image_std": list(std),
        "do_convert_rgb": True,
    }


def save_hf(model, folder: Path) -> None:
    if model.config.vision.pool != "cls":
        raise CheckpointError("transformers' CLIP pools the class token: only pool='cls' models export here")
    if model.config.vision.stem != "patch":
        raise CheckpointError("transformers' CLIP has no conv stem: only patch-stem models export to HF")
    (folder / "config.json").write_text(json.dumps(config_to_hf(model.config), indent=2))
    c = model.config
    pre = preprocessor_config(c.vision.image_size, c.image_mean, c.image_std)
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    save_safetensors(state_dict_to_hf(model.state_dict()), folder / "model.safetensors", metadata={"format": "pt"})
