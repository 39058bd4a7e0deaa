"""Flamingo's Perceiver Resampler (Alayrac et al. 2022), laid out as OpenFlamingo's: a fixed number of
learned latents read a variable number of visual tokens; keys / values are the visual tokens
concatenated with the latents, both LayerNorm'd, then a feed-forward, `depth` times, and a final
LayerNorm. Optional frame and media-position embeddings for video.
(B, T_media, F_frames, V, D) -> (B, T_media, latents, D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, no biases. (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mult, bias=False)
        self.fc2 = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


def split_heads(x: torch.Tensor, h: int) -> torch.Tensor:
    return x.unflatten(-1, (h, -1)).transpose(-3, -2)  # (..., n, h*d) -> (..., h, n, d)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-3, -2).flatten(-2)


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, inner, bias=False)
        self.kv = nn.Linear(dim, 2 * inner, bias=False)
        self.out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x (B, T, N, D) visual tokens, latents (B, T, L, D) -> (B, T, L, D)."""
        x, latents = self.norm_media(x), self.norm_latents(latents)
        q = split_heads(self.q(latents), self.heads)
        k, v = self.kv(torch.cat([x, latents], -2)).chunk(2, -1)
        y = F.scaled_dot_product_attention(q, split_heads(k, self.heads), split_heads(v, self.heads))
        return self.out(merge_heads(y))


class PerceiverLayer(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: int):
        super().__init__()
        self.attn = PerceiverAttention(dim, dim_head, heads)
        self.ff = FeedForward(dim, ff_mult)


class PerceiverResampler(nn.Module):
    def __init__(self, dim: int, depth: int = 6, dim_head: int = 64, heads: int = 8, num_latents: int = 64,
                 max_num_media: int | None = None, max_num_frames: int | None = None, ff_mult: int = 4,
                 latent_init_std: float = 1.0):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * latent_init_std)  # OpenFlamingo: N(0, 1)
        self.frame_embs = nn.Parameter(torch.randn(max_num_frames, dim)) if max_num_frames else None
        self.media_time_embs = nn.Parameter(torch.randn(max_num_media, 1, dim)) if max_num_media else None
        self.layers = nn.ModuleList(PerceiverLayer(dim, dim_head, heads, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, F, V, D): T media, F frames each, V tokens per frame -> (B, T, num_latents, D)."""
        if x.ndim != 5:
            raise ValueError(f"the resampler takes (batch, media, frames, tokens, dim), got shape {tuple(x.shape)}")
        b, t, f, v, d = x.shape
        if self.frame_embs is not None:
            x = x + self.frame_embs[:f].to(x.dtype)[None, None, :, None]
        x = x.reshape(b, t, f * v, d)
        if self.media_time_embs is not None:
            x = x + self.media_time_embs[:t].to(x.dtype)[None]
        lat = self.latents.to(x.dtype).expand(b, t, -1, -1)
        for layer in self.layers:
            lat = layer.attn(x, lat) + lat
            lat = layer.ff(lat) + lat
        return self.norm(lat)


__all__ = ["PerceiverResampler", "PerceiverAttention", "FeedForward"]
