"""open_clip's CLIP <-> mmfm CLIP: config and state-dict mapping, both directions.

open_clip fuses q/k/v like us (`in_proj_weight`), stores projections as (width, dim) matrices used as
`x @ proj` (we use Linear, so transposed), pools text at argmax(input_ids) (= the end token, the
highest id), and records the activation as a `quick_gelu` flag beside the model config."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmfm.checkpoint import load_state_dict, load_strict, read_json, save_safetensors
from mmfm.errors import CheckpointError
from mmfm.models.clip import CLIP, CLIPConfig, apply_overrides

_BLOCK = {"ln_1": "norm1", "ln_2": "norm2", "attn.in_proj": "attn.qkv", "attn.out_proj": "attn.out",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TOP = {
    "visual.conv1.weight": "visual.patch_embed.weight",
    "visual.class_embedding": "visual.class_token",
    "visual.positional_embedding": "visual.pos_embed",
    "visual.ln_pre": "visual.ln_pre",
    "visual.ln_post": "visual.ln_post",
    "token_embedding.weight": "text.token_embed.weight",
    "positional_embedding": "text.pos_embed",
    "ln_final": "text.ln_final",
    "logit_scale": "logit_scale",
}
_PROJ = {"visual.proj": "visual.proj.weight", "text_projection": "text.proj.weight"}
_TOWERS = {
    "visual.transformer.resblocks": "visual.transformer.blocks",
    "transformer.resblocks": "text.transformer.blocks",
}
# open_clip options whose non-default values change the architecture in ways mmfm's CLIP does not have
_UNSUPPORTED_VISION = {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pool_type": "tok",
                       "final_ln_after_pool": False, "timm_model_name": None}
_UNSUPPORTED_TEXT = {"ls_init_value": None, "embed_cls": False, "no_causal_mask": False, "pool_type": "argmax",
                     "proj_bias": False, "hf_model_name": None, "final_ln_after_pool": False}


def config_from_open_clip(oc: dict, preprocess: dict | None = None) -> dict:
    """open_clip model config ({"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}) -> mmfm dict."""
    try:
        v, t = oc["vision_cfg"], oc["text_cfg"]
        if isinstance(v.get("layers"), (list, tuple)):
            raise CheckpointError("ResNet image towers (layers given as a list) are not supported by mmfm CLIP")
        for d, table, name in ((v, _UNSUPPORTED_VISION, "vision_cfg"), (t, _UNSUPPORTED_TEXT, "text_cfg")):
            for key, default in table.items():
                if d.get(key, default) not in (default, None):
                    raise CheckpointError(f"open_clip {name}.{key}={d[key]!r} is not supported by mmfm CLIP")
        act = "quick_gelu" if oc.get("quick_gelu", False) else "gelu"
        vw, tw = v.get("width", 768), t.get("width", 512)
        vocab = t.get("vocab_size", 49408)
        cfg = {
            "model_type": "mmfm-clip",
            "embed_dim": oc["embed_dim"],
            "vision": {"image_size": _side(v.get("image_size", 224)), "patch_size": _side(v.get("patch_size", 16)),
                       "width": vw, "layers": v["layers"], "heads": vw // v.get("head_width", 64),
                       "mlp_dim": int(vw * v.get("mlp_ratio", 4.0)), "act": act},
            "text": {"vocab_size": vocab, "context_length": t.get("context_length", 77), "width": tw,
                     "layers": t.get("layers", 12), "heads": t.get("heads", 8),
                     "mlp_dim": int(tw * t.get("mlp_ratio", 4.0)), "act": act,
                     "sot_token_id": vocab - 2, "eot_token_id": vocab - 1, "pad_token_id": t.get("pad_id", 0)},
        }
        if "init_logit_scale" in oc:
            cfg["init_logit_scale"] = oc["init_logit_scale"]
    except KeyError as e:
        raise CheckpointError(f"open_clip model config is missing {e}") from e
    if preprocess:
        for ours, theirs in (("image_mean", "mean"), ("image_std", "std")):
            if preprocess.get(theirs):
                cfg[ours] = list(preprocess[theirs])
    return cfg


def _side(x):
    if isinstance(x, (list, tuple)):
        if x[0] != x[1]:
            raise CheckpointError(f"non-square size {x} is not supported")
        return x[0]
    return x


def config_to_open_clip(c) -> dict:
    v, t = c.vision, c.text
    if v.act != t.act or v.act not in ("gelu", "quick_gelu"):
        raise CheckpointError("open_clip records one activation, gelu or quick_gelu, for both towers")
    head_width = v.width // v.heads  # open_clip derives the vision head count from head_width
    return {
        "embed_dim": c.embed_dim,
        "quick_gelu": v.act == "quick_gelu",
        "vision_cfg": {"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width, "layers": v.layers,
                       "head_width": head_width, "mlp_ratio": (v.mlp_dim or 4 * v.width) / v.width},
        "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                     "heads": t.heads, "layers": t.layers, "mlp_ratio": (t.mlp_dim or 4 * t.width) / t.width,
                     "pad_id": t.pad_token_id},
    }


def state_dict_from_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k in ("attn_mask", "visual.attn_mask"):
            continue
        if k in _PROJ:
            out[_PROJ[k]] = v.T.contiguous()
            continue
        new = None
        for oc, ours in _TOP.items():
            if k == oc or k.startswith(oc + "."):
                new = ours + k[len(oc) :]
                break
        if new is None:
            for oc, ours in _TOWERS.items():
                if k.startswith(oc + "."):
                    idx, rest = k[len(oc) + 1 :].split(".", 1)
                    for a, b in _BLOCK.items():
                        if rest.startswith(a + "_") or rest.startswith(a + "."):
                            kind = rest[len(a) + 1 :]
                            new = f"{ours}.{idx}.{b}.{kind}"
                            break
                    break
        if new is None:
            raise CheckpointError(f"unexpected key in the open_clip checkpoint: {k}")
        out[new] = v
    return out


def state_dict_to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inv_top = {v: k for k, v in _TOP.items()}
    inv_proj = {v: k for k, v in _PROJ.items()}
    inv_block = {v: k for k, v in _BLOCK.items()}
    out = {}
    for k, v in sd.items():
        if k in inv_proj:
            out[inv_proj[k]] = v.T.contiguous()
            continue
        for ours, oc in ((o, c) for c, o in _TOWERS.items()):
            if k.startswith(ours + "."):
                idx, rest = k[len(ours) + 1 :].split(".", 1)
                sub, _, kind = rest.rpartition(".")
                name = inv_block[sub]
                out[f"{oc}.{idx}.{name}_{kind}" if sub == "attn.qkv" else f"{oc}.{idx}.{name}.{kind}"] = v
                break
        else:
            for ours, oc in inv_top.items():
                if k == ours or k.startswith(ours + "."):
                    out[oc + k[len(ours) :]] = v
                    break
    return out


def read_open_clip_checkpoint(path: Path, config: dict | str | Path | None = None) -> tuple[dict, dict | None, Path]:
    """-> (model config, preprocess config or None, weights file) of an open_clip folder
    (open_clip_config.json + open_clip_model.safetensors / open_clip_pytorch_model.bin) or of a
    checkpoint file whose model config is given as `config` (dict or JSON path). CLIP and CoCa share it."""
    path = Path(path)
    if path.is_dir():
        full = read_json(path / "open_clip_config.json")
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors"):
            if (path / name).is_file():
                return full.get("model_cfg", full), full.get("preprocess_cfg"), path / name
        raise CheckpointError(f"{path}: no open_clip_model.safetensors or open_clip_pytorch_model.bin")
    if config is None:
        raise CheckpointError(f"{path}: an open_clip checkpoint file needs its model config (config=...)")
    oc = config if isinstance(config, dict) else read_json(Path(config))
    return oc.get("model_cfg", oc), None, path


def load_open_clip(path: Path, config: dict | str | Path | None = None, sd: dict | None = None, **overrides):
    """A folder with open_clip_config.json + open_clip_model.safetensors (or open_clip_pytorch_model.bin),
    or a checkpoint file with its model config given as `config` (dict or JSON path); `sd`: the file's
    tensors when the caller has read them already."""
    oc, preprocess, weights = read_open_clip_checkpoint(path, config)
    cfg = apply_overrides(config_from_open_clip(oc, preprocess), overrides, str(path))
    model = CLIP(CLIPConfig.from_dict(cfg))
    load_strict(model, state_dict_from_open_clip(load_state_dict(weights) if sd is None else sd), str(path))
    return model


def save_open_clip(model, folder: Path) -> None:
    if model.config.vision.pool != "cls":
        raise CheckpointError("this exporter pools the class token: only pool='cls' models export here")
    if model.config.vision.stem != "patch":
        raise CheckpointError("open_clip's CLIP has no conv stem: only patch-stem models export to open_clip")
    c = model.config
    cfg = {"model_cfg": config_to_open_clip(c),
           "preprocess_cfg": {"mean": list(c.image_mean), "std": list(c.image_std), "interpolation": "bicubic",
                              "resize_mode": "shortest"}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    save_safetensors(state_dict_to_open_clip(model.state_dict()), folder / "open_clip_model.safetensors")
