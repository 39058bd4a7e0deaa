"""Connectors from vision tokens to a language model's embedding space.

- `MLPProjector`: LLaVA's projectors. "linear" (LLaVA 1.0) or "mlp{N}x_gelu" (LLaVA-1.5: mlp2x_gelu =
  Linear -> GELU -> Linear). Stored as a Sequential `net`, so `net.0` / `net.2` are LLaVA's
  `mm_projector.0` / `mm_projector.2` and transformers' `linear_1` / `linear_2`.
- `MolmoConnector`: Molmo's. Features of two ViT layers are concatenated, every 2x2 block of patches
  is pooled into one token by attention whose query is the mean of the 4 patches ("attention-meanq"),
  then a SwiGLU MLP maps it to the LM width. 4x fewer image tokens than LLaVA for the same grid.
- `PatchPooler`: Molmo2's generalisation of it: which patches a token pools is a table of indices (any
  window, across crops, -1 for none), so overlapping crops and video frames pool with one module.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.errors import ConfigError
from mmfm.nn.attention import Attention, combine_masks
from mmfm.nn.blocks import SwiGLU, activation

_MLP = re.compile(r"mlp(\d+)x_gelu")


def projector_kind(name: str) -> tuple[str, int]:
    """"linear" -> ("mlp", 1); "mlp2x_gelu" -> ("mlp", 2); "molmo" -> ("molmo", 0)."""
    if name == "linear":
        return "mlp", 1
    if name == "molmo":
        return "molmo", 0
    m = _MLP.fullmatch(name)
    if m and int(m.group(1)) >= 1:
        return "mlp", int(m.group(1))
    raise ConfigError(f"unknown projector {name!r}; use linear, mlp2x_gelu (any mlpNx_gelu) or molmo")


class MLPProjector(nn.Module):
    """(B, N, in_dim) -> (B, N, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, act: str = "gelu", bias: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=bias)]
        for _ in range(depth - 1):
            layers += [activation(act), nn.Linear(out_dim, out_dim, bias=bias)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MolmoConnector(nn.Module):
    """(B, gh * gw, in_dim) patch features on a gh x gw grid -> (B, ceil(gh/2) * ceil(gw/2), out_dim).
    An odd grid is padded with zeros at the bottom / right, as Molmo does.

    With `layout`, the tokens come framed as Molmo's processor frames them: a start token, a column token
    after each row, an end token -> (B, 1 + h * (w + 1) + 1, out_dim) for the h x w pooled grid. The LM
    reads a token's place from its position in the sequence; in row order that tells it the row, and the
    column token gives it the column too (its distance from the last row end). The three embeddings are
    learned (Molmo's are rows of its extended vocabulary)."""

    def __init__(self, in_dim: int, width: int, out_dim: int, heads: int = 4, hidden: int | None = None, pool: int = 2,
                 layout: bool = False):
        super().__init__()
        if width % heads:
            raise ConfigError(f"Molmo pooling width {width} is not divisible by {heads} heads")
        self.pool, self.heads, self.head_dim = pool, heads, width // heads
        self.q = nn.Linear(in_dim, width)
        self.k = nn.Linear(in_dim, width)
        self.v = nn.Linear(in_dim, width)
        self.out = nn.Linear(width, width)
        self.mlp = SwiGLU(width, hidden or 4 * width, out_dim=out_dim)
        # start, column, end: initialised small here; mmfm.train.llava.add_image_layout starts them from the LM's
        self.layout = nn.Parameter(torch.randn(3, out_dim) * 0.02) if layout else None

    def tokens(self, gh: int, gw: int) -> int:
        h, w = -(-gh // self.pool), -(-gw // self.pool)
        return h * w + (h + 2 if self.layout is not None else 0)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        gh, gw = grid
        p = self.pool
        x = x.view(b, gh, gw, c)
        ph, pw = (-gh) % p, (-gw) % p
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        gh2, gw2 = (gh + ph) // p, (gw + pw) // p
        # (B, gh2, p, gw2, p, C) -> (B * gh2 * gw2, p * p, C): one group per output token
        groups = x.view(b, gh2, p, gw2, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b * gh2 * gw2, p * p, c)
        query = groups.mean(1, keepdim=True)
        split = lambda t: t.view(t.shape[0], t.shape[1], self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(split(self.q(query)), split(self.k(groups)), split(self.v(groups)))
        y = self.out(y.transpose(1, 2).reshape(b * gh2 * gw2, 1, -1))
        y = self.mlp(y.view(b, gh2 * gw2, -1))
        if self.layout is None:
            return y
        start, col, end = self.layout.to(y.dtype)[:, None, None, :].expand(3, b, 1, y.shape[-1])
        rows = torch.cat([y.view(b, gh2, gw2, -1), col[:, None].expand(b, gh2, 1, -1)], 2).flatten(1, 2)
        return torch.cat([start, rows, end], 1)


class PatchPooler(nn.Module):
    """features (N, P, in_dim) of N crops or frames, index (T, K) into the N * P patches (-1 = none) ->
    (T', out_dim) for the T' rows with at least one patch. Each row's patches are attended by their
    mean (padding slots masked and left out of the mean), then a SwiGLU maps the result to out_dim."""

    def __init__(self, in_dim: int, width: int, out_dim: int, heads: int, head_dim: int, hidden: int,
                 kv_heads: int | None = None, bias: bool = True, mlp_bias: bool = False, act: str = "silu"):
        super().__init__()
        self.attn = Attention(in_dim, heads, head_dim=head_dim, kv_heads=kv_heads, kv_dim=in_dim, bias=bias,
                              out_dim=width)
        self.mlp = SwiGLU(width, hidden, bias=mlp_bias, act=act, out_dim=out_dim, out_bias=False)

    def forward(self, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        flat = features.reshape(-1, features.shape[-1])
        valid = index >= 0
        groups = flat[index.clamp_min(0)] * valid[..., None].to(flat.dtype)  # (T, K, C)
        count = valid.sum(-1).clamp_min(1).to(flat.dtype)
        query = groups.sum(1, keepdim=True) / count[:, None, None]
        y = self.attn(query, context=groups, mask=combine_masks(valid[:, None, None, :]))
        return self.mlp(y[:, 0])[valid.any(-1)]


__all__ = ["MLPProjector", "MolmoConnector", "PatchPooler", "projector_kind"]
