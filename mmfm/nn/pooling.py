"""Flamingo's vision-to-language blocks (Alayrac et al. 2022), laid out as OpenFlamingo's:

- `PerceiverResampler`: a fixed number of learned latents read a variable number of visual tokens;
  keys / values are the visual tokens concatenated with the latents, both LayerNorm'd, then a
  feed-forward, `depth` times, and a final LayerNorm. Optional frame and media-position embeddings
  for video. (B, T_media, F_frames, V, D) -> (B, T_media, latents, D).
- `MaskedCrossAttention`: text tokens attend to the resampled media. A text token's "media time" is
  the number of `<image>` tokens up to and including it; it sees only the image of that time (or, with
  only_immediate=False, every earlier one); text before the first image sees nothing (output 0).
- `GatedCrossAttentionBlock`: x + tanh(attn_gate) * attn(x), then x + tanh(ff_gate) * ff(x), both gates
  starting at 0, so that inserting the block leaves a pretrained LM unchanged.

With a `StaticKV`, the media's keys / values are projected once per generation (as CoCa's decoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.nn.attention import StaticKV


class FeedForward(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, no biases. (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mult, bias=False)
        self.fc2 = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    return x.unflatten(-1, (h, -1)).transpose(-3, -2)  # (..., n, h*d) -> (..., h, n, d)


def _merge(x: torch.Tensor) -> torch.Tensor:
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
        q = _heads(self.q(latents), self.heads)
        k, v = self.kv(torch.cat([x, latents], -2)).chunk(2, -1)
        y = F.scaled_dot_product_attention(q, _heads(k, self.heads), _heads(v, self.heads))
        return self.out(_merge(y))


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


def media_time(media_locations: torch.Tensor) -> torch.Tensor:
    """(B, T) bool, True at `<image>` tokens -> (B, T) long: how many images up to and including each token."""
    return media_locations.long().cumsum(-1)


class MaskedCrossAttention(nn.Module):
    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, only_immediate: bool = True):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, inner, bias=False)
        self.kv = nn.Linear(dim_visual, 2 * inner, bias=False)
        self.out = nn.Linear(inner, dim, bias=False)
        self.only_immediate = only_immediate

    def forward(self, x: torch.Tensor, media: torch.Tensor | None, text_time: torch.Tensor,
                cache: StaticKV | None = None) -> torch.Tensor:
        """x (B, Tt, D); media (B, Tm, L, Dv) (None when the cache holds it); text_time (B, Tt) from
        `media_time` (a decoding step passes the number of images so far) -> (B, Tt, D)."""
        q = _heads(self.q(self.norm(x)), self.heads)
        if cache is not None and cache.filled:
            k, v, (n_media, per) = cache.k, cache.v, cache.layout
        else:
            n_media, per = media.shape[1], media.shape[2]
            k, v = self.kv(media.flatten(1, 2)).chunk(2, -1)
            k, v = _heads(k, self.heads), _heads(v, self.heads)
            if cache is not None:
                cache.k, cache.v, cache.layout = k, v, (n_media, per)
        when = torch.arange(1, n_media + 1, device=x.device).repeat_interleave(per)  # (Tm * L,)
        tt = text_time[:, None, :, None]
        allowed = (tt == when) if self.only_immediate else (tt >= when)  # (B, 1, Tt, Tm*L)
        sees = allowed.any(-1, keepdim=True)
        # rows that may see nothing (text before the first image) get any key, then are zeroed
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=allowed | ~sees)
        y = y * sees.to(y.dtype)
        return self.out(_merge(y))


class GatedCrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, ff_mult: int = 4,
                 only_immediate: bool = True):
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, dim_head, heads, only_immediate)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = FeedForward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x, media, text_time, cache: StaticKV | None = None):
        """Without any media (None or zero images, and nothing cached) the attention term is skipped
        (no text token could see an image); the gated feed-forward applies to every token, as in
        OpenFlamingo, where it also runs on the text before the first image."""
        if (cache is not None and cache.filled) or (media is not None and media.shape[1] > 0):
            x = x + torch.tanh(self.attn_gate).to(x.dtype) * self.attn(x, media, text_time, cache)
        return x + torch.tanh(self.ff_gate).to(x.dtype) * self.ff(x)


__all__ = ["PerceiverResampler", "PerceiverAttention", "MaskedCrossAttention", "GatedCrossAttentionBlock",
           "FeedForward", "media_time"]
