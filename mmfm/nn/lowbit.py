"""4-bit weights run as they are stored, for decoding on the CPU.

A decode step reads every weight of the model once for a few rows of activations, so its speed is the
speed of streaming weights from memory: 4-bit weights are a quarter of bf16's bytes. llama.cpp's
Q4_0 / Q4_1 files store each row in blocks of 32 values, each block a scale and an offset
(w = scale * code + offset, code in 0..15), which is exactly the layout of PyTorch's CPU kernel
`_weight_int4pack_mm_for_cpu` (group size 32, w = (code - 8) * scale + zero): so a GGUF's blocks are
repacked, not re-quantized, and the matmul sees the file's own values (the scales rounded from fp16
to bf16, the kernel's type: at most 2^-9 relative). The kernel is fast with bf16 activations and
~30x slower with fp32 ones (measured, bench/RESULTS.md), so an Int4Linear computes in bf16.

The LM head (the tied 49,152-row embedding of SmolLM2, Q8_0 in the GGUF) does not survive 4 bits (greedy
answers change), but 8 bits per row do: `Int8Linear` runs PyTorch's `_weight_int8pack_mm` (one scale per
output row; Q8_0's scale per 32 values cannot be kept, so the row is re-quantized). Whether it is faster
than the bf16 head depends on the host; mmfm.precision.lm_head_dtype measures it.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfm.nn.lora import LoRALinear

GROUP = 32  # ggml's Q4 block; also one of the kernel's group sizes


def available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


def pack_int4(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """codes (N, K) in 0..15, scale and offset (N, K / 32) with w = scale * code + offset ->
    (packed (N, K / 2) uint8, scales_and_zeros (K / 32, N, 2) bf16) for the CPU kernel."""
    n, k = codes.shape
    if k % GROUP or scale.shape != (n, k // GROUP) or offset.shape != scale.shape:
        raise ValueError(f"int4: codes {tuple(codes.shape)} need scales of shape ({n}, {k // GROUP})")
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
    zero = offset.float() + 8 * scale.float()  # the kernel centres codes at 8
    sz = torch.stack([scale.float().t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()
    return packed, sz


class Int4Linear(nn.Module):
    """y = x W^T (+ b) with W in 4-bit groups of 32. Shapes: x (..., in_features) -> (..., out_features),
    in bf16. Buffers (saved in a state dict): packed (out, in / 2) uint8, scales_and_zeros
    (in / 32, out, 2) bf16."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales_and_zeros",
                             torch.zeros(in_features // GROUP, out_features, 2, dtype=torch.bfloat16))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=torch.bfloat16), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, self.in_features).to(torch.bfloat16), self.packed, GROUP, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The weight (out, in) in fp32, as the kernel sees it (for checks and conversions)."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, GROUP, self.scales_and_zeros).float().t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {GROUP}"


class Int4LoRA(nn.Module):
    """A LoRA-adapted Linear for inference on a low-bit base (Int4Linear, Int8Linear): y = base(x) +
    (alpha / r) B A x, the adapters kept as trained (not merged: merging would change the low-bit base)."""

    def __init__(self, base: nn.Module, lora: LoRALinear):
        super().__init__()
        self.base, self.scaling = base, lora.scaling
        self.lora_a = nn.Parameter(lora.lora_a.detach().to(torch.bfloat16), requires_grad=False)
        self.lora_b = nn.Parameter(lora.lora_b.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)
        return self.base(x) + (x @ self.lora_a.t()) @ self.lora_b.t() * self.scaling


def int8_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """y = x W^T with W in int8, one scale per output row (symmetric: w = scale * code, code in -127..127).
    Shapes: x (..., in_features) -> (..., out_features), in bf16. Buffers (saved in a state dict): codes
    (out, in) int8, scales (out,) bf16."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        if in_features % GROUP:  # the kernel crashes the process on widths of 8 mod 16 (seen with 24, 40, 56)
            raise ValueError(f"int8: in_features {in_features} is not a multiple of {GROUP}")
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.bfloat16))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=torch.bfloat16), requires_grad=False) if bias else None

    @classmethod
    def quantized(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, rows: int = 256) -> Int8Linear:
        """From a float weight (out, in), a block of rows at a time (no fp32 copy of a large head); any
        weight sliced by rows will do (Int8Embedding.row_blocks(): a head tied to a Q8_0 table)."""
        lin = cls(weight.shape[1], weight.shape[0], bias=bias is not None)
        if bias is not None:
            lin.bias.data = bias.detach().to(torch.bfloat16)
        for i in range(0, weight.shape[0], rows):
            w = weight[i : i + rows].detach().float()
            # the scale is rounded to bf16 first, so codes are computed against the scale the kernel uses
            s = (w.abs().amax(1) / 127).clamp_min(1e-12).to(torch.bfloat16)
            lin.codes[i : i + rows] = (w / s.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
            lin.scales[i : i + rows] = s
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features).to(torch.bfloat16), self.codes,
                                               self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The weight (out, in) in fp32, as the kernel sees it."""
        return self.codes.float() * self.scales.float()[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per row"


class Int8Embedding(nn.Module):
    """Token embeddings kept as ggml's Q8_0 stores them (int8 codes in blocks of 32, one fp16 scale each),
    each looked-up row dequantized to bf16 on use, as llama.cpp does: the table takes half of bf16's bytes
    and gives the very values a bf16 table read from the same file holds. Shapes: ids (...) -> (..., dim)
    bf16. Buffers: codes (num, dim) int8, scales (num, dim / 32) fp16."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("codes", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scales", torch.zeros(num_embeddings, embedding_dim // GROUP, dtype=torch.float16))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows(self.codes[ids], self.scales[ids])

    @staticmethod
    def rows(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        w = codes.float().unflatten(-1, (-1, GROUP)) * scales.float()[..., None]
        return w.flatten(-2).to(torch.bfloat16)

    def row_blocks(self):
        """Rows as a float weight would give them, for Int8Linear.quantized (the tied LM head)."""
        return _RowView(self)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 blocks of {GROUP} (Q8_0)"


class _RowView:
    """weight[i:j] of an Int8Embedding without materialising the whole table."""

    def __init__(self, emb: Int8Embedding):
        self.emb, self.shape = emb, (emb.num_embeddings, emb.embedding_dim)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return Int8Embedding.rows(self.emb.codes[rows], self.emb.scales[rows])


def replacement(linear: nn.Module, base: nn.Module) -> nn.Module | None:
    """What takes an nn.Linear's (or a LoRALinear's) place once its weight is `base`; None for others."""
    if type(linear) is nn.Linear:
        return base
    if type(linear) is LoRALinear:
        return Int4LoRA(base, linear)
    return None


def int4_linears(model: nn.Module, names) -> None:
    """Put an (empty) Int4Linear in place of each named nn.Linear of `model` (e.g. on the meta device,
    before a state dict with their buffers is assigned)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, child)
        with torch.device(lin.weight.device):
            setattr(parent, child, Int4Linear(lin.in_features, lin.out_features, bias=lin.bias is not None))


__all__ = ["Int4Linear", "Int4LoRA", "Int8Embedding", "Int8Linear", "int8_available", "replacement", "pack_int4",
           "int4_linears", "available", "GROUP"]
