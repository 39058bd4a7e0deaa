"""HF transformers Llama folders (config.json + model.safetensors / pytorch_model.bin + tokenizer)
<-> mmfm's DecoderLM. q/k/v and gate/up are fused on the way in and split on the way out."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmfm.checkpoint import load_folder_weights, read_json, save_safetensors
from mmfm.errors import CheckpointError
from mmfm.nn.decoder import DecoderConfig


def config_from_hf(cfg: dict, where: str = "config.json") -> DecoderConfig:
    if cfg.get("model_type") != "llama":
        raise CheckpointError(f"{where}: model_type {cfg.get('model_type')!r}, expected 'llama'")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{where}: hidden_act {act!r}; Llama's SwiGLU uses silu and mmfm does not load others")
    rope = cfg.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", (cfg.get("rope_scaling") or {}).get("rope_type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"{where}: rope type {rope_type!r} is not supported yet (only 'default')")
    heads = cfg["num_attention_heads"]
    return DecoderConfig(
        vocab_size=cfg["vocab_size"],
        dim=cfg["hidden_size"],
        layers=cfg["num_hidden_layers"],
        heads=heads,
        kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        hidden=cfg["intermediate_size"],
        style="llama",
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", cfg.get("rope_theta", 10000.0)),
        max_seq_len=cfg.get("max_position_embeddings", 2048),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attn_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
        extra={"source": "hf-llama"},
    )


def config_to_hf(c: DecoderConfig) -> dict:
    if c.style != "llama":
        raise CheckpointError("only llama-style models are written as HF Llama folders")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.dim,
        "intermediate_size": c.hidden,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_theta": c.rope_theta, "rope_type": "default"},
        "max_position_embeddings": c.max_seq_len,
        "tie_word_embeddings": c.tie_embeddings,
        "attention_bias": c.attn_bias,
        "mlp_bias": c.mlp_bias,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "torch_dtype": "float32",
    }


def state_dict_from_hf(sd: dict[str, torch.Tensor], c: DecoderConfig) -> dict[str, torch.Tensor]:
    def take(k):
        if k not in sd:
            raise CheckpointError(f"HF Llama checkpoint is missing {k!r}")
        return sd.pop(k)

    sd = dict(sd)
    out = {"embed.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    if "lm_head.weight" in sd:
        head = sd.pop("lm_head.weight")
        if not c.tie_embeddings:
            out["lm_head.weight"] = head
    elif not c.tie_embeddings:
        raise CheckpointError("HF Llama checkpoint has no lm_head.weight but tie_word_embeddings is false")
    for i in range(c.layers):
        p, q = f"model.layers.{i}.", f"transformer.blocks.{i}."
        out[q + "norm1.weight"] = take(p + "input_layernorm.weight")
        out[q + "norm2.weight"] = take(p + "post_attention_layernorm.weight")
        a = p + "self_attn."
        out[q + "attn.qkv.weight"] = torch.cat([take(a + f"{n}_proj.weight") for n in "qkv"])
        if c.attn_bias:
            out[q + "attn.qkv.bias"] = torch.cat([take(a + f"{n}_proj.bias") for n in "qkv"])
            out[q + "attn.out.bias"] = take(a + "o_proj.bias")
        out[q + "attn.out.weight"] = take(a + "o_proj.weight")
        m = p + "mlp."
        out[q + "mlp.gate_up.weight"] = torch.cat([take(m + "gate_proj.weight"), take(m + "up_proj.weight")])
        out[q + "mlp.down.weight"] = take(m + "down_proj.weight")
        if c.mlp_bias:
            out[q + "mlp.gate_up.bias"] = torch.cat([take(m + "gate_proj.bias"), take(m + "up_proj.bias")])
            out[q + "mlp.down.bias"] = take(m + "down_proj.bias")
    leftover = [k for k in sd if not k.endswith("rotary_emb.inv_freq")]
    if leftover:
        raise CheckpointError(f"HF Llama checkpoint has keys mmfm does not use: {leftover[:5]}")
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], c: DecoderConfig) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    q_out, kv_out = c.heads * c.head_dim, c.kv_heads * c.head_dim
    for i in range(c.layers):
        p, q = f"model.layers.{i}.", f"transformer.blocks.{i}."
        out[p + "input_layernorm.weight"] = sd[q + "norm1.weight"]
        out[p + "post_attention_layernorm.weight"] = sd[q + "norm2.weight"]
        for suffix in ("weight", "bias") if c.attn_bias else ("weight",):
            wq, wk, wv = sd[f"{q}attn.qkv.{suffix}"].split([q_out, kv_out, kv_out])
            for n, w in zip("qkv", (wq, wk, wv)):
                out[f"{p}self_attn.{n}_proj.{suffix}"] = w
            out[f"{p}self_attn.o_proj.{suffix}"] = sd[f"{q}attn.out.{suffix}"]
        for suffix in ("weight", "bias") if c.mlp_bias else ("weight",):
            g, u = sd[f"{q}mlp.gate_up.{suffix}"].split(c.hidden)
            out[f"{p}mlp.gate_proj.{suffix}"], out[f"{p}mlp.up_proj.{suffix}"] = g, u
            out[f"{p}mlp.down_proj.{suffix}"] = sd[f"{q}mlp.down.{suffix}"]
    return {k: v.contiguous() for k, v in out.items()}


def read_hf_llama(folder: str | Path):
    folder = Path(folder)
    config = config_from_hf(read_json(folder / "config.json"), str(folder / "config.json"))
    sd = state_dict_from_hf(load_folder_weights(folder), config)
    return config, sd


def write_hf_llama(folder: str | Path, config: DecoderConfig, sd: dict[str, torch.Tensor]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_to_hf(config), indent=2))
    save_safetensors(state_dict_to_hf(sd, config), folder / "model.safetensors", metadata={"format": "pt"})


__all__ = ["read_hf_llama", "write_hf_llama", "config_from_hf", "config_to_hf"]
