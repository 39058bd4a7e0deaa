"""Prepacked Linear weights for decoding on the CPU.

A decode step multiplies a few rows (the batch) by every weight of the model once, so it is bound by
how fast the weights stream from memory, and PyTorch's default CPU path for such a skinny matmul reads
a row-major weight well below the memory bandwidth. The packed layouts that PyTorch's own inductor
"freezing" uses stream them faster (numbers in bench/RESULTS.md): MKL's packed sgemm for fp32 (results
differ from F.linear by accumulation order, ~1e-7) and oneDNN's blocked layout for bf16 (bit-identical).

`PackedLinears(model, batch)` makes a `PackedLinear` module for each plain Linear (fp32 LoRA merged),
and `with packs.active():` puts them in their parents' place for one decode step and puts the Linears
back after, so the model is never left altered between steps. A pack is kept on its Linear and reused
by the next generation while the weight is the same tensor at the same version; an in-place update (an
optimizer step, load_state_dict) bumps the version and `.to()` makes a new tensor: either repacks.
"""

from __future__ import annotations

import contextlib
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


def _onednn_bf16() -> bool:
    """oneDNN packs bf16 weights only on CPUs with AVX-512 (bw, vl, dq) or AVX-NE-CONVERT; an AVX2-only
    host raises at the reorder, so there bf16 Linears stay unpacked."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _backend(dtype: torch.dtype) -> str | None:
    if dtype == torch.float32 and _mkl():
        return "mkl"
    if dtype == torch.bfloat16 and not _onednn_bf16():
        return None
    return "onednn" if _onednn() else None


def _pack(backend: str, weight: torch.Tensor, batch: int) -> torch.Tensor:
    if backend == "mkl":
        return torch.ops.mkl._mkl_reorder_linear_weight(weight, batch)
    return torch.ops.mkldnn._reorder_linear_weight(weight, batch)


class PackedLinear(nn.Module):
    """A Linear's forward on its packed weight. Not a Parameter holder: it is built from a Linear,
    swapped in only while decoding, and never saved."""

    def __init__(self, backend: str, packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 batch: int):
        super().__init__()
        self.backend, self.packed, self.weight, self.bias, self.batch = backend, packed, weight, bias, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "mkl":  # packed for `batch` rows; other row counts fall back to the plain weight
            return torch.ops.mkl._mkl_linear.default(x, self.packed, self.weight, self.bias, self.batch)
        return torch.ops.mkldnn._linear_pointwise.default(x, self.packed, self.bias, "none", [], "")


def _version_key(*tensors: torch.Tensor) -> tuple:
    """Changes when any tensor is replaced or modified in place (PyTorch bumps `_version` on each)."""
    return tuple((t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for t in tensors)


class PackedLinears:
    """The `nn.Linear`s of `model` packed for `batch` rows; `with packs.active(): model(...)` runs them on
    the packs. A fp32 LoRALinear is packed with its adapter merged in (one matmul instead of three; the
    same result up to fp32 rounding); a bf16 one is left alone, since rounding the merged weight to bf16
    would change its outputs. Other Linear subclasses are left alone (their forward may add more)."""

    def __init__(self, model: nn.Module, batch: int):
        packed: dict[int, PackedLinear] = {}
        for m in model.modules():  # each module once, a tied LM head included
            p = _packed(m, batch)
            if p is not None:
                packed[id(m)] = p
        # every place a packed Linear sits: (parent's child table, name, the Linear, its pack)
        self.slots = [(parent._modules, name, child, packed[id(child)])
                      for parent in model.modules() for name, child in parent._modules.items()
                      if child is not None and id(child) in packed]

    @property
    def forwards(self) -> list[tuple[nn.Module, PackedLinear]]:
        """(Linear, its pack), each Linear once."""
        return list({id(lin): (lin, p) for _, _, lin, p in self.slots}.values())

    @classmethod
    def maybe(cls, model: nn.Module, batch: int, new_tokens: int, enabled: bool | None) -> PackedLinears | None:
        """Packs when it pays: on the CPU, with MKL or oneDNN, outside autocast (the packed ops do not
        autocast), for at least 4 decode steps (a first packing costs about three).
        enabled=False never packs; True packs whenever it can."""
        if enabled is False or not available() or torch.is_autocast_enabled("cpu") or getattr(model, "compiles", False):
            return None  # (a compiled model: inductor cannot lower the packed ops, and fuses better without)
        if enabled is None and new_tokens < 4:
            return None
        try:
            packs = cls(model, batch)
        except RuntimeError:  # a PyTorch build whose MKL / oneDNN cannot pack this dtype
            return None
        return packs if packs.forwards else None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        # the parents' child tables are written directly: nn.Module.__setattr__ is slow enough to show
        # in a decode step of a 30-layer LM
        for table, name, _, packed in self.slots:
            table[name] = packed
        try:
            yield
        finally:
            for table, name, linear, _ in self.slots:
                table[name] = linear


def _packed(m: nn.Module, batch: int) -> PackedLinear | None:
    """The pack of a plain (or fp32 LoRA) CPU Linear, from its cache when the weight is unchanged."""
    lora = type(m) is LoRALinear
    if not (type(m) is nn.Linear or lora):
        return None
    w = m.weight
    if w.device.type != "cpu" or w.dtype not in _DTYPES:
        return None
    if lora and (w.dtype != torch.float32 or m.lora_a.dtype != torch.float32):
        return None
    if m.bias is not None and m.bias.dtype != w.dtype:
        return None
    backend = _backend(w.dtype)
    if backend is None:
        return None
    key = (backend, batch, _version_key(w, *((m.lora_a, m.lora_b) if lora else ())))
    cached = getattr(m, "_mmfm_pack", None)
    if cached is None or cached[0] != key:
        weight = (m.merged_weight() if lora else w).detach()
        bias = None if m.bias is None else m.bias.detach()
        cached = (key, PackedLinear(backend, _pack(backend, weight, batch), weight, bias, batch))
        m.__dict__["_mmfm_pack"] = cached  # a plain attribute: not a submodule, never in a state dict
    return cached[1]


__all__ = ["PackedLinear", "PackedLinears", "available"]
