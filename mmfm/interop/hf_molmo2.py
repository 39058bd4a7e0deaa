"""transformers' Molmo2ForConditionalGeneration folders <-> mmfm Molmo2.

Weights: the released checkpoints' names, which transformers (5.x) also writes on save_pretrained and
renames on load (its conversion_mapping):
  model.transformer.wte.embedding (vocab, d) + wte.new_embedding (extra, d)   -> lm.embed (concatenated)
  model.transformer.blocks.i.{attn_norm, ff_norm, self_attn.att_proj (q;k;v), self_attn.attn_out,
      self_attn.{q,k}_norm, mlp.ff_proj (up;gate), mlp.ff_out}, model.transformer.ln_f, lm_head
  model.vision_backbone.image_vit.{patch_embedding, positional_embedding, transformer.resblocks.i.
      {attention.w{q,k,v,o}, attention_norm, ffn_norm, feed_forward.w{1,2}}}
  model.vision_backbone.image_pooling_2d.w{q,k,v,o}, image_projector.w{1 gate, 2 down, 3 up}
Config: transformers' keys (vision_config / adapter_config / text_config) and the released files' own
(vit_config, vit_layers, image_default_input_size, qkv_bias, rope_theta, ...). Only the default RoPE is
read (what the released Qwen3 and OLMo backbones use); a scaled one is refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmfm.checkpoint import load_folder_weights, load_strict, read_json, save_safetensors
from mmfm.errors import CheckpointError, ConfigError
from mmfm.lm.frozen_base import after_meta_load
from mmfm.lm.tokenizer import LMTokenizer
from mmfm.models.molmo2 import Molmo2, Molmo2Config

_ACT = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu", "silu": "silu",
        "quick_gelu": "quick_gelu"}


def _act(name: str, where: str) -> str:
    if name not in _ACT:
        raise CheckpointError(f"{where}: activation {name!r} is not supported")
    return _ACT[name]


def config_from_hf(hf: dict) -> Molmo2Config:
    try:
        v = hf.get("vision_config") or hf["vit_config"]
        a, t = hf["adapter_config"], hf["text_config"]
    except KeyError as e:
        raise CheckpointError(f"Molmo2 config.json is missing {e}") from e
    legacy = "vit_config" in hf and "vision_config" not in hf
    layers = a.get("vision_feature_layer", a.get("vit_layers", [24, 18]))
    n_vit = v.get("num_hidden_layers", 25)
    if legacy:  # the released config lists more ViT layers than its weights hold (see transformers)
        layers = [i % n_vit for i in layers]
        n_vit = max(layers) + 1
    size = v.get("image_size", v.get("image_default_input_size", [378, 378]))
    size = size if isinstance(size, int) else size[0]
    rope = t.get("rope_parameters") or {"rope_type": "default", "rope_theta": t.get("rope_theta", 10000.0)}
    if rope.get("rope_type", "default") != "default" or t.get("rope_scaling"):
        raise CheckpointError(f"Molmo2 text_config: RoPE {rope.get('rope_type')!r} / rope_scaling is not supported "
                              "(mmfm reads the default RoPE)")
    vocab, extra = t.get("vocab_size", 151936), t.get("additional_vocab_size", 128)
    patch_id = hf.get("image_patch_id", 151938)
    try:
        return Molmo2Config(
            vision=dict(width=v["hidden_size"], layers=n_vit, heads=v["num_attention_heads"],
                        kv_heads=v.get("num_key_value_heads"), head_dim=v.get("head_dim", 72),
                        mlp_dim=v["intermediate_size"], act=_act(v.get("hidden_act", "gelu_pytorch_tanh"), "vision"),
                        patch_size=v.get("patch_size", v.get("image_patch_size", 14)), image_size=size,
                        norm_eps=v.get("layer_norm_eps", 1e-6)),
            adapter=dict(feature_layers=tuple(layers), width=a.get("hidden_size", 1152), heads=a["num_attention_heads"],
                         kv_heads=a.get("num_key_value_heads"), head_dim=a.get("head_dim", 72),
                         attn_bias=a.get("attention_bias", True), hidden=a["intermediate_size"],
                         mlp_bias=a.get("mlp_bias", False), act=_act(a.get("hidden_act", "silu"), "adapter")),
            lm=dict(vocab_size=vocab, extra_vocab=extra, dim=t["hidden_size"], layers=t["num_hidden_layers"],
                    heads=t["num_attention_heads"], kv_heads=t.get("num_key_value_heads"), head_dim=t.get("head_dim"),
                    hidden=t["intermediate_size"], act=_act(t.get("hidden_act", "silu"), "text"),
                    norm_eps=t.get("rms_norm_eps", t.get("layer_norm_eps", 1e-6)),
                    rope_theta=rope.get("rope_theta", 10000.0), max_seq_len=t.get("max_position_embeddings", 36864),
                    tie_embeddings=False, attn_bias=t.get("attention_bias", t.get("qkv_bias", False)), out_bias=False,
                    qk_norm={"qwen3": "head", "olmo": "full"}[t.get("qk_norm_type", "qwen3")],
                    post_norm=t.get("norm_after", False)),
            image_start_id=hf.get("image_start_token_id", 151936), image_end_id=hf.get("image_end_token_id", 151937),
            image_patch_id=patch_id, image_col_id=hf.get("image_col_id", patch_id + 1),
            low_res_start_id=hf.get("low_res_image_start_token_id", 151940),
            image_low_id=hf.get("image_low_res_id", patch_id + 4),
            frame_start_id=hf.get("frame_start_token_id", 151943), frame_end_id=hf.get("frame_end_token_id", 151944),
            frame_tokens=hf.get("use_frame_special_tokens", True),
        )
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"Molmo2 config.json: {e}") from e


def config_to_hf(c: Molmo2Config) -> dict:
    v, a, t = c.vision, c.adapter, c.lm
    act = {"gelu_tanh": "gelu_pytorch_tanh"}
    return {
        "architectures": ["Molmo2ForConditionalGeneration"], "model_type": "molmo2",
        "image_start_token_id": c.image_start_id, "low_res_image_start_token_id": c.low_res_start_id,
        "image_end_token_id": c.image_end_id, "image_patch_id": c.image_patch_id,
        "frame_start_token_id": c.frame_start_id, "frame_end_token_id": c.frame_end_id, "tie_word_embeddings": False,
        "vision_config": {"model_type": "molmo2_vision", "hidden_size": v.width, "intermediate_size": v.mlp_dim,
                          "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
                          "num_key_value_heads": v.kv_heads or v.heads, "head_dim": v.head_dim,
                          "hidden_act": act.get(v.act, v.act), "layer_norm_eps": v.norm_eps,
                          "image_size": [v.image_size, v.image_size], "patch_size": v.patch_size,
                          "num_position_embeddings": v.positions, "attention_bias": True},
        "adapter_config": {"model_type": "molmo2_adapter", "vision_feature_layer": list(a.feature_layers),
                           "hidden_size": a.width, "num_attention_heads": a.heads,
                           "num_key_value_heads": a.kv_heads or a.heads, "head_dim": a.head_dim,
                           "attention_bias": a.attn_bias, "hidden_act": a.act, "intermediate_size": a.hidden,
                           "text_hidden_size": t.dim, "mlp_bias": a.mlp_bias},
        "text_config": {"model_type": "molmo2_text", "hidden_size": t.dim, "num_attention_heads": t.heads,
                        "num_key_value_heads": t.kv_heads, "head_dim": t.head_dim, "vocab_size": t.vocab_size,
                        "additional_vocab_size": t.extra_vocab, "attention_bias": t.attn_bias,
                        "qk_norm_type": {"head": "qwen3", "full": "olmo"}[t.qk_norm],
                        "num_hidden_layers": t.layers, "intermediate_size": t.hidden, "hidden_act": t.act,
                        "max_position_embeddings": t.max_seq_len, "rms_norm_eps": t.norm_eps,
                        "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta},
                        "norm_after": t.post_norm, "tie_word_embeddings": False},
    }


_LM = "model.transformer."
_VIT = "model.vision_backbone.image_vit."
_ADAPT = "model.vision_backbone."


def state_dict_from_hf(sd: dict[str, torch.Tensor], c: Molmo2Config) -> dict[str, torch.Tensor]:
    sd = dict(sd)
    take = sd.pop
    out: dict[str, torch.Tensor] = {}
    try:
        out["lm.embed.weight"] = torch.cat([take(_LM + "wte.embedding"), take(_LM + "wte.new_embedding")])
        out["lm.norm.weight"] = take(_LM + "ln_f.weight")
        out["lm.lm_head.weight"] = take("lm_head.weight")
        for i in range(c.lm.layers):
            src, dst = f"{_LM}blocks.{i}.", f"lm.transformer.blocks.{i}."
            out[dst + "norm1.weight"] = take(src + "attn_norm.weight")
            out[dst + "norm2.weight"] = take(src + "ff_norm.weight")
            out[dst + "attn.qkv.weight"] = take(src + "self_attn.att_proj.weight")
            if c.lm.attn_bias:
                out[dst + "attn.qkv.bias"] = take(src + "self_attn.att_proj.bias")
            out[dst + "attn.out.weight"] = take(src + "self_attn.attn_out.weight")
            out[dst + "attn.q_norm.weight"] = take(src + "self_attn.q_norm.weight")
            out[dst + "attn.k_norm.weight"] = take(src + "self_attn.k_norm.weight")
            up, gate = take(src + "mlp.ff_proj.weight").chunk(2)
            out[dst + "mlp.gate_up.weight"] = torch.cat([gate, up])
            out[dst + "mlp.down.weight"] = take(src + "mlp.ff_out.weight")
        out["vision.patch_embed.weight"] = take(_VIT + "patch_embedding.weight")
        out["vision.patch_embed.bias"] = take(_VIT + "patch_embedding.bias")
        out["vision.pos_embed"] = take(_VIT + "positional_embedding")
        for i in range(c.vision.layers):
            src, dst = f"{_VIT}transformer.resblocks.{i}.", f"vision.transformer.blocks.{i}."
            for part in ("weight", "bias"):
                out[dst + f"attn.qkv.{part}"] = torch.cat([take(src + f"attention.w{x}.{part}") for x in "qkv"])
                out[dst + f"attn.out.{part}"] = take(src + f"attention.wo.{part}")
                out[dst + f"norm1.{part}"] = take(src + f"attention_norm.{part}")
                out[dst + f"norm2.{part}"] = take(src + f"ffn_norm.{part}")
                out[dst + f"mlp.fc1.{part}"] = take(src + f"feed_forward.w1.{part}")
                out[dst + f"mlp.fc2.{part}"] = take(src + f"feed_forward.w2.{part}")
        pool = _ADAPT + "image_pooling_2d."
        parts = ("weight", "bias") if c.adapter.attn_bias else ("weight",)
        for part in parts:
            out[f"adapter.attn.q.{part}"] = take(pool + f"wq.{part}")
            out[f"adapter.attn.kv.{part}"] = torch.cat([take(pool + f"wk.{part}"), take(pool + f"wv.{part}")])
            out[f"adapter.attn.out.{part}"] = take(pool + f"wo.{part}")
        proj = _ADAPT + "image_projector."
        out["adapter.mlp.gate_up.weight"] = torch.cat([take(proj + "w1.weight"), take(proj + "w3.weight")])
        out["adapter.mlp.down.weight"] = take(proj + "w2.weight")
        if c.adapter.mlp_bias:
            out["adapter.mlp.gate_up.bias"] = torch.cat([take(proj + "w1.bias"), take(proj + "w3.bias")])
    except KeyError as e:
        raise CheckpointError(f"the Molmo2 checkpoint has no tensor {e}") from e
    # the released files hold ViT layers past the deepest one the adapter reads: never used
    extra = [k for k in sd if not k.startswith(_VIT + "transformer.resblocks.")]
    if extra:
        raise CheckpointError(f"unexpected keys in the Molmo2 checkpoint: {sorted(extra)[:5]}")
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], c: Molmo2Config) -> dict[str, torch.Tensor]:
    """The inverse of state_dict_from_hf."""
    inv: dict[str, torch.Tensor] = {}
    embed = sd["lm.embed.weight"]
    inv[_LM + "wte.embedding"] = embed[: c.lm.vocab_size]
    inv[_LM + "wte.new_embedding"] = embed[c.lm.vocab_size:]
    inv[_LM + "ln_f.weight"] = sd["lm.norm.weight"]
    inv["lm_head.weight"] = sd["lm.lm_head.weight"]
    for i in range(c.lm.layers):
        src, dst = f"lm.transformer.blocks.{i}.", f"{_LM}blocks.{i}."
        inv[dst + "attn_norm.weight"] = sd[src + "norm1.weight"]
        inv[dst + "ff_norm.weight"] = sd[src + "norm2.weight"]
        inv[dst + "self_attn.att_proj.weight"] = sd[src + "attn.qkv.weight"]
        if c.lm.attn_bias:
            inv[dst + "self_attn.att_proj.bias"] = sd[src + "attn.qkv.bias"]
        inv[dst + "self_attn.attn_out.weight"] = sd[src + "attn.out.weight"]
        inv[dst + "self_attn.q_norm.weight"] = sd[src + "attn.q_norm.weight"]
        inv[dst + "self_attn.k_norm.weight"] = sd[src + "attn.k_norm.weight"]
        gate, up = sd[src + "mlp.gate_up.weight"].chunk(2)
        inv[dst + "mlp.ff_proj.weight"] = torch.cat([up, gate])
        inv[dst + "mlp.ff_out.weight"] = sd[src + "mlp.down.weight"]
    inv[_VIT + "patch_embedding.weight"] = sd["vision.patch_embed.weight"]
    inv[_VIT + "patch_embedding.bias"] = sd["vision.patch_embed.bias"]
    inv[_VIT + "positional_embedding"] = sd["vision.pos_embed"]
    for i in range(c.vision.layers):
        src, dst = f"vision.transformer.blocks.{i}.", f"{_VIT}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            for x, t in zip("qkv", sd[src + f"attn.qkv.{part}"].chunk(3)):
                inv[dst + f"attention.w{x}.{part}"] = t
            inv[dst + f"attention.wo.{part}"] = sd[src + f"attn.out.{part}"]
            inv[dst + f"attention_norm.{part}"] = sd[src + f"norm1.{part}"]
            inv[dst + f"ffn_norm.{part}"] = sd[src + f"norm2.{part}"]
            inv[dst + f"feed_forward.w1.{part}"] = sd[src + f"mlp.fc1.{part}"]
            inv[dst + f"feed_forward.w2.{part}"] = sd[src + f"mlp.fc2.{part}"]
    pool = _ADAPT + "image_pooling_2d."
    for part in ("weight", "bias") if c.adapter.attn_bias else ("weight",):
        inv[pool + f"wq.{part}"] = sd[f"adapter.attn.q.{part}"]
        inv[pool + f"wk.{part}"], inv[pool + f"wv.{part}"] = sd[f"adapter.attn.kv.{part}"].chunk(2)
        inv[pool + f"wo.{part}"] = sd[f"adapter.attn.out.{part}"]
    proj = _ADAPT + "image_projector."
    inv[proj + "w1.weight"], inv[proj + "w3.weight"] = sd["adapter.mlp.gate_up.weight"].chunk(2)
    inv[proj + "w2.weight"] = sd["adapter.mlp.down.weight"]
    if c.adapter.mlp_bias:
        inv[proj + "w1.bias"], inv[proj + "w3.bias"] = sd["adapter.mlp.gate_up.bias"].chunk(2)
    return {k: v.contiguous() for k, v in inv.items()}


def load_hf_molmo2(folder: Path, dtype=torch.float32) -> Molmo2:
    folder = Path(folder)
    config = config_from_hf(read_json(folder / "config.json"))
    with torch.device("meta"):
        model = Molmo2(config)
    sd = state_dict_from_hf(load_folder_weights(folder), config)
    load_strict(model, {k: v.to(dtype) for k, v in sd.items()}, str(folder), assign=True)
    after_meta_load(model)
    if (folder / "tokenizer.json").is_file():  # a released folder carries its tokenizer
        model.tokenizer = LMTokenizer.from_pretrained(folder)
    return model.to(dtype).eval()


def save_hf_molmo2(model: Molmo2, folder: Path) -> None:
    c = model.config
    if c.tower != "vit":
        raise CheckpointError("transformers' Molmo2 has its own ViT; a model on an mmfm CLIP tower saves as mmfm only")
    if c.frame_col_tokens:
        raise CheckpointError("transformers' Molmo2 has no column tokens in video frames (frame_col_tokens): "
                              "this model saves as mmfm only")
    if c.frame_index_ids:
        raise CheckpointError("transformers' Molmo2 has one patch token for every frame (frame_index_ids): "
                              "this model saves as mmfm only")
    if c.lora:
        raise CheckpointError("merge the LoRA adapters first (mmfm.nn.lora.merge_lora); transformers has no LoRA")
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    (Path(folder) / "config.json").write_text(json.dumps(config_to_hf(c), indent=2))
    save_safetensors(state_dict_to_hf(sd, c), Path(folder) / "model.safetensors", metadata={"format": "pt"})


__all__ = ["config_from_hf", "config_to_hf", "state_dict_from_hf", "state_dict_to_hf", "load_hf_molmo2",
           "save_hf_molmo2"]
