"""Flamingo's gated cross-attention (Alayrac et al. 2022), laid out as OpenFlamingo's:

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
from mmfm.nn.perceiver import FeedForward, merge_heads, split_heads


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
        q = split_heads(self.q(self.norm(x)), self.heads)
        if cache is not None and cache.filled:
            k, v, (n_media, per) = cache.k, cache.v, cache.layout
        else:
            n_media, per = media.shape[1], media.shape[2]
            k, v = self.kv(media.flatten(1, 2)).chunk(2, -1)
            k, v = split_heads(k, self.heads), split_heads(v, self.heads)
            if cache is not None:
                cache.k, cache.v, cache.layout = k, v, (n_media, per)
        when = torch.arange(1, n_media + 1, device=x.device).repeat_interleave(per)  # (Tm * L,)
        tt = text_time[:, None, :, None]
        allowed = (tt == when) if self.only_immediate else (tt >= when)  # (B, 1, Tt, Tm*L)
        sees = allowed.any(-1, keepdim=True)
        # rows that may see nothing (text before the first image) get any key, then are zeroed
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=allowed | ~sees)
        y = y * sees.to(y.dtype)
        return self.out(merge_heads(y))


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


__all__ = ["MaskedCrossAttention", "GatedCrossAttentionBlock", "media_time"]
