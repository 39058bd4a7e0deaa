"""OpenFlamingo checkpoints -> mmfm's Flamingo blocks: key mapping for the Perceiver Resampler
(`perceiver.*`) and the gated cross-attention layers (`lang_encoder.gated_cross_attn_layers.N.*`).

OpenFlamingo stores an attention as to_q / to_kv / to_out (ours: q / kv / out) and a feed-forward as
Sequential(LayerNorm, Linear, GELU, Linear) (ours: norm / fc1 / fc2); a Perceiver layer is a pair
(attention, feed-forward) at indices 0 / 1 (ours: attn / ff)."""

from __future__ import annotations

import torch

from mmfm.checkpoint import load_state_dict, load_strict
from mmfm.errors import CheckpointError
from mmfm.interop.registry import load as load_any
from mmfm.lm.frozen_base import after_meta_load, tower_state
from mmfm.lm.model import LanguageModel, as_dtype
from mmfm.models.clip import CLIP
from mmfm.models.flamingo import Flamingo, FlamingoConfig

_ATTN = {"to_q": "q", "to_kv": "kv", "to_out": "out"}
_FF = {"0": "norm", "1": "fc1", "3": "fc2"}


def _attn_or_ff(kind: str, parts: list[str], key: str) -> list[str]:
    table = _ATTN if kind == "attn" else _FF
    if parts[0] not in table and not (kind == "attn" and parts[0] in ("norm", "norm_media", "norm_latents")):
        raise CheckpointError(f"unexpected OpenFlamingo key {key}")
    return [table.get(parts[0], parts[0]), *parts[1:]]


def perceiver_from_open_flamingo(sd: dict[str, torch.Tensor], prefix: str = "perceiver.") -> dict[str, torch.Tensor]:
    """OpenFlamingo `perceiver.*` -> mmfm PerceiverResampler keys (other keys are ignored)."""
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        parts = k[len(prefix):].split(".")
        if parts[0] == "layers":
            i, j, rest = parts[1], parts[2], parts[3:]
            kind = "attn" if j == "0" else "ff"
            out[".".join(["layers", i, kind, *_attn_or_ff(kind, rest, k)])] = v
        else:
            out[".".join(parts)] = v
    return out


def gated_from_open_flamingo(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """One GatedCrossAttentionBlock's keys (attn.*, attn_gate, ff.*, ff_gate) after `prefix` -> ours."""
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        parts = k[len(prefix):].split(".")
        if parts[0] in ("attn", "ff"):
            out[".".join([parts[0], *_attn_or_ff(parts[0], parts[1:], k)])] = v
        elif parts[0] in ("attn_gate", "ff_gate"):
            out[parts[0]] = v
        else:
            raise CheckpointError(f"unexpected OpenFlamingo key {k}")
    return out


def gated_layers_from_open_flamingo(sd: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """`lang_encoder.gated_cross_attn_layers.N.*` -> {N: block state dict}; layers OpenFlamingo leaves
    empty (None between every cross_attn_every_n_layers) have no keys and are absent."""
    prefix = "lang_encoder.gated_cross_attn_layers."
    ids = sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})
    return {i: gated_from_open_flamingo(sd, f"{prefix}{i}.") for i in ids}


_ATTN_BACK = {v: k for k, v in _ATTN.items()}
_FF_BACK = {v: k for k, v in _FF.items()}


def _to_theirs(kind: str, parts: list[str]) -> list[str]:
    table = _ATTN_BACK if kind == "attn" else _FF_BACK
    return [table.get(parts[0], parts[0]), *parts[1:]]


def perceiver_to_open_flamingo(sd: dict[str, torch.Tensor], prefix: str = "perceiver.") -> dict[str, torch.Tensor]:
    """mmfm PerceiverResampler keys -> OpenFlamingo `perceiver.*`."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "layers":
            i, kind, rest = parts[1], parts[2], parts[3:]
            out[prefix + ".".join(["layers", i, "0" if kind == "attn" else "1", *_to_theirs(kind, rest)])] = v
        else:
            out[prefix + k] = v
    return out


def gated_to_open_flamingo(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        out[prefix + (".".join([parts[0], *_to_theirs(parts[0], parts[1:])]) if parts[0] in ("attn", "ff") else k)] = v
    return out


# ----------------------------------------------------------------------------------------- whole model
_EMBED_KEYS = ("lang_encoder.model.embed_tokens.weight", "lang_encoder.transformer.wte.weight",
               "lang_encoder.gpt_neox.embed_in.weight")
_HEAD_KEYS = ("lang_encoder.lm_head.weight", "lang_encoder.embed_out.weight")
DIM_HEAD = 64  # OpenFlamingo fixes the head width of the resampler and the cross-attention at 64


def read_open_flamingo_checkpoint(path) -> dict[str, torch.Tensor]:
    """checkpoint.pt (a state dict, or a training checkpoint {"model_state_dict": ...}) or .safetensors,
    read without unpickling code (weights_only=True); DDP's "module." prefixes are removed."""
    from pathlib import Path


    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such OpenFlamingo checkpoint file")
    if path.suffix == ".safetensors":
        sd = load_state_dict(path)
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickle / zip errors of every kind
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
        if isinstance(sd, dict) and "model_state_dict" in sd:
            sd = sd["model_state_dict"]
    if not isinstance(sd, dict) or not any(str(k).startswith(("perceiver.", "module.perceiver.")) for k in sd):
        raise CheckpointError(f"{path}: no perceiver.* keys; this is not an OpenFlamingo checkpoint")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def _first(sd: dict, keys) -> torch.Tensor | None:
    return next((sd[k] for k in keys if k in sd), None)


def load_open_flamingo(checkpoint, vision, lm, *, image_token_id: int | None = None, eoc_token_id: int | None = None,
                       only_attend_immediate_media: bool = True, dtype="float32"):
    """An OpenFlamingo model as an mmfm Flamingo: `checkpoint` holds the learned parts (perceiver.*,
    lang_encoder.gated_cross_attn_layers.*, the resized embedding with the new tokens' rows), `vision`
    the open_clip model it was trained with (a path mmfm.load reads, or an mmfm CLIP), `lm` its language
    model (a path to an HF Llama folder / GGUF, or a LanguageModel). The token ids default to
    OpenFlamingo's order: `<|endofchunk|>` = vocab, `<image>` = vocab + 1."""
    sd = checkpoint if isinstance(checkpoint, dict) else read_open_flamingo_checkpoint(checkpoint)
    clip = vision if isinstance(vision, CLIP) else load_any(vision)
    if not isinstance(clip, CLIP):
        raise CheckpointError(f"{vision}: the vision encoder must be a CLIP checkpoint (open_clip, HF or mmfm)")
    lm = lm if isinstance(lm, LanguageModel) else load_any(lm)
    if not isinstance(lm, LanguageModel):
        raise CheckpointError(f"{lm}: the language model must be an HF Llama folder, a GGUF file or an mmfm LM")
    vocab = lm.config.vocab_size
    embed = _first(sd, _EMBED_KEYS)
    if embed is None or embed.shape[0] <= vocab:
        raise CheckpointError("the checkpoint has no resized input embedding with the new tokens' rows "
                              f"(looked for {', '.join(_EMBED_KEYS)})")
    resampler = perceiver_from_open_flamingo(sd)
    gated = gated_layers_from_open_flamingo(sd)
    if not gated:
        raise CheckpointError("the checkpoint has no lang_encoder.gated_cross_attn_layers.*")
    every = min(gated) + 1
    if sorted(gated) != [i for i in range(lm.config.layers) if (i + 1) % every == 0]:
        raise CheckpointError(
            f"gated layers at {sorted(gated)} do not match every {every}th of {lm.config.layers} LM layers"
        )
    g0 = gated[min(gated)]
    depth = len({k.split(".")[1] for k in resampler if k.startswith("layers.")})
    cfg = FlamingoConfig(
        vision=clip.config.vision, lm=lm.config, cross_attn_every_n_layers=every,
        num_latents=resampler["latents"].shape[0], resampler_depth=depth,
        resampler_heads=resampler["layers.0.attn.q.weight"].shape[0] // DIM_HEAD, resampler_dim_head=DIM_HEAD,
        resampler_ff_mult=resampler["layers.0.ff.fc1.weight"].shape[0] // resampler["latents"].shape[1],
        xattn_heads=g0["attn.q.weight"].shape[0] // DIM_HEAD, xattn_dim_head=DIM_HEAD,
        xattn_ff_mult=g0["ff.fc1.weight"].shape[0] // lm.config.dim,
        only_attend_immediate_media=only_attend_immediate_media,
        max_num_media=resampler["media_time_embs"].shape[0] if "media_time_embs" in resampler else None,
        max_num_frames=resampler["frame_embs"].shape[0] if "frame_embs" in resampler else None,
        vision_ln_post=True, vision_norm_eps=clip.config.norm_eps, image_mean=clip.config.image_mean,
        image_std=clip.config.image_std, new_tokens=embed.shape[0] - vocab,
        image_token_id=vocab + 1 if image_token_id is None else image_token_id,
        eoc_token_id=vocab if eoc_token_id is None else eoc_token_id)
    with torch.device("meta"):
        model = Flamingo(cfg)
    state = tower_state(clip, model.vision)  # the CLIP's head is not part of the tower
    state.update({"lm." + k: v for k, v in lm.model.state_dict().items()})
    state.update({"resampler." + k: v for k, v in resampler.items()})
    for i, block in gated.items():
        state.update({f"xattn.{i}.{k}": v for k, v in block.items()})
    state["new_embed.weight"] = embed[vocab:]
    if not lm.config.tie_embeddings:
        head = _first(sd, _HEAD_KEYS)
        if head is None or head.shape[0] != embed.shape[0]:
            raise CheckpointError("the LM has an untied output layer but the checkpoint has no resized lm_head")
        state["new_head.weight"] = head[vocab:]
    dt = as_dtype(dtype)
    load_strict(model, {k: v.to(dt) for k, v in state.items()}, "OpenFlamingo checkpoint", assign=True)
    after_meta_load(model)
    model.tokenizer = lm.tokenizer
    return model.eval()


def open_flamingo_state_dict(model) -> dict[str, torch.Tensor]:
    """An mmfm Flamingo's learned parts (and the resized embeddings) under OpenFlamingo's key names, as
    its checkpoint.pt holds them."""
    sd = model.state_dict()
    out = perceiver_to_open_flamingo({k[len("resampler."):]: v for k, v in sd.items() if k.startswith("resampler.")})
    for i in model.xattn:
        block = {k[len(f"xattn.{i}."):]: v for k, v in sd.items() if k.startswith(f"xattn.{i}.")}
        out.update(gated_to_open_flamingo(block, f"lang_encoder.gated_cross_attn_layers.{i}."))
        out.update(gated_to_open_flamingo(block, f"lang_encoder.model.layers.{i}.gated_cross_attn_layer."))
    out["lang_encoder.model.embed_tokens.weight"] = torch.cat(
        [sd["lm.embed.weight"], sd["new_embed.weight"].to(sd["lm.embed.weight"].dtype)]
    )
    if model.new_head is not None:
        out["lang_encoder.lm_head.weight"] = torch.cat(
            [sd["lm.lm_head.weight"], sd["new_head.weight"].to(sd["lm.lm_head.weight"].dtype)]
        )
    return {k: v.contiguous() for k, v in out.items()}


__all__ = ["perceiver_from_open_flamingo", "gated_from_open_flamingo", "gated_layers_from_open_flamingo",
           "perceiver_to_open_flamingo", "gated_to_open_flamingo", "read_open_flamingo_checkpoint",
           "load_open_flamingo", "open_flamingo_state_dict"]
