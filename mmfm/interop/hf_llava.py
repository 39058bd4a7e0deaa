"""transformers' LlavaForConditionalGeneration folders and original LLaVA projector files <-> mmfm Llava.

Key schemes read (they changed across transformers versions):
  older hub checkpoints   vision_tower.vision_model.*, multi_modal_projector.*, language_model.model.*,
                          language_model.lm_head.*
  transformers 4.52-4.5x  model.vision_tower.vision_model.*, model.multi_modal_projector.*,
                          model.language_model.*, lm_head.*
  transformers 5          vision_tower.*, multi_modal_projector.*, language_model.model.*, language_model.lm_head.*
  original LLaVA          model.mm_projector.{0,2}.* (the stage-1 projector file, mm_projector.bin)
Written: the scheme the installed transformers writes itself (version 5). The vision tower's unused
post_layernorm is dropped on the way in and written as an identity on the way out.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmfm.checkpoint import load_folder_weights, load_state_dict, load_strict, read_json, save_safetensors
from mmfm.errors import CheckpointError
from mmfm.interop import hf_clip
from mmfm.lm import hf_llama
from mmfm.lm.frozen_base import after_meta_load
from mmfm.lm.tokenizer import LMTokenizer
from mmfm.models.llava import Llava, LlavaConfig
from mmfm.nn.connectors import MLPProjector
from mmfm.nn.lora import merge_lora


def config_from_hf(hf: dict, preprocessor: dict | None = None):
    try:
        v, t = hf["vision_config"], hf["text_config"]
    except KeyError as e:
        raise CheckpointError(f"HF LLaVA config is missing {e}") from e
    if v.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise CheckpointError(f"vision tower {v.get('model_type')!r}: mmfm's LLaVA reads CLIP vision towers only")
    lm = hf_llama.config_from_hf(
        {**t, "tie_word_embeddings": t.get("tie_word_embeddings", hf.get("tie_word_embeddings", False))},
        "config.json text_config",
    )
    layers = hf.get("vision_feature_layer", -2)
    strategy = hf.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise CheckpointError(f"vision_feature_select_strategy {strategy!r}: use default or full")
    act = v.get("hidden_act", "quick_gelu")
    act = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}.get(act, act)
    pact = hf.get("projector_hidden_act", "gelu")
    if pact not in ("gelu", "relu", "quick_gelu"):
        raise CheckpointError(f"projector_hidden_act {pact!r} is not supported")
    image_token_id = hf.get("image_token_id", hf.get("image_token_index"))
    if image_token_id is None:
        raise CheckpointError("HF LLaVA config has no image_token_id / image_token_index")
    cfg = dict(
        vision=dict(
            image_size=v.get("image_size", 224),
            patch_size=v.get("patch_size", 32),
            width=v["hidden_size"],
            layers=v["num_hidden_layers"],
            heads=v["num_attention_heads"],
            mlp_dim=v["intermediate_size"],
            act=act,
        ),
        lm=lm,
        vision_layers=(layers,) if isinstance(layers, int) else tuple(layers),
        vision_features="patch" if strategy == "default" else "cls_patch",
        projector="mlp2x_gelu",
        projector_act=pact,
        projector_bias=hf.get("multimodal_projector_bias", True),
        vision_norm_eps=v.get("layer_norm_eps", 1e-5),
        image_token_id=int(image_token_id),
    )
    if preprocessor:
        cfg["image_mean"] = preprocessor.get("image_mean", cfg.get("image_mean"))
        cfg["image_std"] = preprocessor.get("image_std", cfg.get("image_std"))
    return LlavaConfig(**{k: val for k, val in cfg.items() if val is not None})


def config_to_hf(c) -> dict:
    lm = hf_llama.config_to_hf(c.lm)
    v = c.vision
    act = {"gelu_tanh": "gelu_pytorch_tanh"}.get(v.act, v.act)
    layers = c.vision_layers[0] if len(c.vision_layers) == 1 else list(c.vision_layers)
    return {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "image_token_index": c.image_token_id, "vision_feature_layer": layers,
        "vision_feature_select_strategy": "default" if c.vision_features == "patch" else "full",
        "projector_hidden_act": c.projector_act, "multimodal_projector_bias": c.projector_bias,
        "tie_word_embeddings": c.lm.tie_embeddings,
        "image_seq_length": (v.image_size // v.patch_size) ** 2,
        "vision_config": {"model_type": "clip_vision_model", "image_size": v.image_size, "patch_size": v.patch_size,
                          "hidden_size": v.width, "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
                          "intermediate_size": v.mlp_dim or 4 * v.width, "hidden_act": act,
                          "layer_norm_eps": c.vision_norm_eps},
        "text_config": lm,
    }


def _split_keys(sd: dict[str, torch.Tensor]):
    """Any known scheme -> (vision in HF CLIP's `vision_model.*` names, projector in ours, Llama's names)."""
    vision, proj, lm = {}, {}, {}
    for k, val in sd.items():
        key = k
        for pre in ("model.vision_tower.", "model.multi_modal_projector."):
            if key.startswith(pre):
                key = key[len("model."):]
        if key.startswith("model.language_model."):
            lm["model." + key[len("model.language_model."):]] = val
        elif key.startswith("language_model."):
            lm[key[len("language_model."):]] = val
        elif key == "lm_head.weight":
            lm[key] = val
        elif key.startswith("vision_tower."):
            rest = key[len("vision_tower."):]
            vision[rest if rest.startswith("vision_model.") else "vision_model." + rest] = val
        elif key.startswith("multi_modal_projector."):
            rest = key[len("multi_modal_projector."):]
            rest = rest.replace("linear_1.", "net.0.", 1).replace("linear_2.", "net.2.", 1)
            proj[rest] = val
        elif key.startswith("model.mm_projector."):
            proj["net." + key[len("model.mm_projector."):]] = val
        else:
            raise CheckpointError(f"unexpected key in the LLaVA checkpoint: {k}")
    return vision, proj, lm


def state_dict_from_hf(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    vision, proj, lm = _split_keys(sd)
    out = {}
    for k, val in hf_clip.state_dict_from_hf(vision).items():
        if k.startswith("visual.ln_post."):
            continue  # LLaVA reads hidden states; the tower's final norm is never used
        out["vision." + k[len("visual."):]] = val
    out.update({"projector." + k: val for k, val in proj.items()})
    out.update({"lm." + k: val for k, val in hf_llama.state_dict_from_hf(lm, config.lm).items()})
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    vis = {"visual." + k[len("vision."):]: v for k, v in sd.items() if k.startswith("vision.")}
    out = {}
    for k, v in hf_clip.state_dict_to_hf(vis).items():
        out["vision_tower." + k[len("vision_model."):]] = v
    w = config.vision.width
    out["vision_tower.post_layernorm.weight"] = torch.ones(w)
    out["vision_tower.post_layernorm.bias"] = torch.zeros(w)
    for k, v in sd.items():
        if k.startswith("projector."):
            rest = k[len("projector."):].replace("net.0.", "linear_1.", 1).replace("net.2.", "linear_2.", 1)
            out["multi_modal_projector." + rest] = v
    lm = {k[len("lm."):]: v for k, v in sd.items() if k.startswith("lm.")}
    for k, v in hf_llama.state_dict_to_hf(lm, config.lm).items():
        out["language_model." + k] = v
    return {k: v.contiguous() for k, v in out.items()}


def load_hf_llava(folder: Path, dtype=torch.float32):
    folder = Path(folder)
    pre = folder / "preprocessor_config.json"
    config = config_from_hf(read_json(folder / "config.json"), read_json(pre) if pre.is_file() else None)
    with torch.device("meta"):
        model = Llava(config)
    sd = state_dict_from_hf(load_folder_weights(folder), config)
    if config.lm.tie_embeddings:
        sd["lm.lm_head.weight"] = sd["lm.embed.weight"]
    load_strict(model, {k: v.to(dtype) for k, v in sd.items()}, str(folder), assign=True)
    after_meta_load(model)
    if (folder / "tokenizer.json").is_file():
        model.tokenizer = LMTokenizer.from_pretrained(folder)
    return model.to(dtype).eval()


def save_hf_llava(model, folder: Path) -> None:
    c = model.config
    if not isinstance(model.projector, MLPProjector) or len(model.projector.net) != 3:
        raise CheckpointError(f"transformers' Llava has the mlp2x_gelu projector; this model uses {c.projector!r}")
    if c.vision.stem != "patch":
        raise CheckpointError("transformers' CLIP vision tower has no conv stem: only patch-stem towers export")
    if c.image_token_id >= c.lm.vocab_size:
        raise CheckpointError(f"image_token_id {c.image_token_id} is outside the LM's vocabulary ({c.lm.vocab_size}); "
                              "transformers embeds the placeholder, so it must be a real token")
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    if c.lora:
        import copy

        m2 = copy.deepcopy(model)
        merge_lora(m2.lm)
        sd = {k: v.detach().float() for k, v in m2.state_dict().items()}
    hf = config_to_hf(c)
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    pre = hf_clip.preprocessor_config(c.vision.image_size, c.image_mean, c.image_std)
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    save_safetensors(state_dict_to_hf(sd, c), folder / "model.safetensors", metadata={"format": "pt"})


def load_llava_projector(path, model) -> None:
    """Load an original LLaVA projector file (mm_projector.bin / .safetensors, keys model.mm_projector.N.*)
    into `model.projector` (stage 1's output, the usual starting point of stage 2)."""
    sd = load_state_dict(path)
    _, proj, rest = _split_keys(sd)
    if rest or not proj:
        raise CheckpointError(f"{path}: not a LLaVA projector file (expected model.mm_projector.* keys)")
    load_strict(model.projector, proj, str(path))


__all__ = ["config_from_hf", "config_to_hf", "state_dict_from_hf", "state_dict_to_hf", "load_hf_llava",
           "save_hf_llava", "load_llava_projector"]
