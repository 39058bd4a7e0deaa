"""OpenFlamingo checkpoints -> mmfm's Flamingo blocks: key mapping for the Perceiver Resampler
(`perceiver.*`) and the gated cross-attention layers (`lang_encoder.gated_cross_attn_layers.N.*`).

OpenFlamingo stores an attention as to_q / to_kv / to_out (ours: q / kv / out) and a feed-forward as
Sequential(LayerNorm, Linear, GELU, Linear) (ours: norm / fc1 / fc2); a Perceiver layer is a pair
(attention, feed-forward) at indices 0 / 1 (ours: attn / ff)."""

from __future__ import annotations

import torch

from mmfm.errors import CheckpointError

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


__all__ = ["perceiver_from_open_flamingo", "gated_from_open_flamingo", "gated_layers_from_open_flamingo"]
