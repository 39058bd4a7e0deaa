"""Prepacked Linear weights for decoding on the CPU.

A decode step multiplies a few rows (the batch) by every weight of the model once, so it is bound by
how fast the weights stream from memory. PyTorch's default CPU path for such a skinny matmul reads a
row-major weight at about half the memory bandwidth on the machines we measured (a 30-layer
SmolLM2-shaped stack: 8.8 GB/s where a plain sum over the same bytes reads 21.8 GB/s). A packed
layout streams the same weights 1.3-2x faster (bench/RESULTS.md); we use the two that PyTorch's own
inductor "freezing" uses for CPU inference: MKL's packed sgemm for fp32 (~4 us a call; results differ
from F.linear by accumulation order, ~1e-7) and oneDNN's blocked layout for bf16 (bit-identical; ~19
us a call, which is why fp32 does not use it). `PackedLinears` packs the Linears of a model (fp32
LoRA merged) and swaps the packs in only around each decode step, so the model is never left
altered between steps.

Packing reads and writes every weight once (~0.2 s for SmolLM2-135M in fp32, as long as three decode
steps), so a pack is kept on its Linear and reused by the next generation while the weight is the
same tensor at the same version: an in-place update (an optimizer step, load_state_dict) bumps the
version, `.to()` makes a new tensor, and either repacks. The cost is a second copy of the weights.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

from mmfm.nn.lora import LoRALinear

_DTYPES = (torch.float32, torch.bfloat16)


def _mkl() -> bool:
    return bool(torch.backends.mkl.is_available()) and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")


def _onednn() -> bool:
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def available() -> bool:
    return _mkl() or _onednn()


def _backend(dtype: torch.dtype) -> str | None:
    if dtype == torch.float32 and _mkl():
        return "mkl"
    return "onednn" if _onednn() else None


def _pack(backend: str, weight: torch.Tensor, batch: int) -> torch.Tensor:
    if backend == "mkl":
        return torch.ops.mkl._mkl_reorder_linear_weight(weight, batch)
    return torch.ops.mkldnn._reorder_linear_weight(weight, batch)


def _mkl_forward(packed, weight, bias, batch, x):
    # MKL's packed GEMM was packed for `batch` rows; other row counts fall back to the plain weight
    return torch.ops.mkl._mkl_linear.default(x, packed, weight, bias, batch)


def _onednn_forward(packed, bias, x):
    return torch.ops.mkldnn._linear_pointwise.default(x, packed, bias, "none", [], "")


def _version_key(*tensors: torch.Tensor) -> tuple:
    """Changes when any tensor is replaced or modified in place (PyTorch bumps `_version` on each)."""
    return tuple((t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for t in tensors)


class PackedLinears:
    """The `nn.Linear`s of `model` packed for `batch` rows; `with packs.active(): model(...)` runs them on
    the packs. A fp32 LoRALinear is packed with its adapter merged in (one matmul instead of three;
    the same result up to fp32 rounding); a bf16 one is left alone, since rounding the merged weight to
    bf16 would change its outputs. Other Linear subclasses are left alone (their forward may add more)."""

    def __init__(self, model: nn.Module, batch: int):
        self.forwards: list[tuple[nn.Linear, functools.partial]] = []
        for m in model.modules():  # each module once, a tied LM head included
            lora = type(m) is LoRALinear
            if not (type(m) is nn.Linear or lora):
                continue
            w = m.weight
            if w.device.type != "cpu" or w.dtype not in _DTYPES:
                continue
            if lora and (w.dtype != torch.float32 or m.lora_a.dtype != torch.float32):
                continue
            if m.bias is not None and m.bias.dtype != w.dtype:
                continue
            backend = _backend(w.dtype)
            if backend is None:
                continue
            key = (backend, batch, _version_key(w, *((m.lora_a, m.lora_b) if lora else ())))
            cached = getattr(m, "_mmfm_pack", None)
            if cached is None or cached[0] != key:
                weight = (m.merged_weight() if lora else w).detach()
                cached = (key, _pack(backend, weight, batch), weight)
                m._mmfm_pack = cached  # a plain attribute: not a buffer, never saved in a state dict
            bias = None if m.bias is None else m.bias.detach()
            if backend == "mkl":
                fwd = functools.partial(_mkl_forward, cached[1], cached[2], bias, batch)
            else:
                fwd = functools.partial(_onednn_forward, cached[1], bias)
            self.forwards.append((m, fwd))

    @classmethod
    def maybe(cls, model: nn.Module, batch: int, new_tokens: int, enabled: bool | None) -> PackedLinears | None:
        """Packs when it pays: on the CPU, with MKL or oneDNN, outside autocast (the packed ops do not
        autocast), for at least 4 decode steps (a first packing costs about three).
        enabled=False never packs; True packs whenever it can."""
        if enabled is False or not available() or torch.is_autocast_enabled("cpu"):
            return None
        if enabled is None and new_tokens < 4:
            return None
        try:
            packs = cls(model, batch)
        except RuntimeError:  # a PyTorch build whose MKL / oneDNN cannot pack this dtype
            return None
        return packs if packs.forwards else None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        # an instance attribute shadows nn.Linear.forward; deleting it restores it. Written to __dict__
        # directly: nn.Module.__setattr__ / __delattr__ cost ~1 us each, ~0.25 ms a step for 120 Linears
        for m, f in self.forwards:
            m.__dict__["forward"] = f
        try:
            yield
        finally:
            for m, _ in self.forwards:
                m.__dict__.pop("forward", None)


__all__ = ["PackedLinears", "available"]
