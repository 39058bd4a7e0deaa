"""Multi-head attention on `F.scaled_dot_product_attention`: self-attention with a fused qkv projection,
cross-attention, grouped-query heads, rotary positions, boolean or additive masks, and a KV cache.

Mask convention everywhere in mmfm: a boolean mask is True where attention is ALLOWED (SDPA's own
convention), broadcastable to (B, heads, Tq, Tk). Helpers below build and combine such masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.nn.norms import RMSNorm
from mmfm.nn.plan import Plan


# ------------------------------------------------------------------------------------------- masks
def causal_mask(tq: int, tk: int | None = None, device=None) -> torch.Tensor:
    """(Tq, Tk) bool: query i (the last Tq of Tk positions) sees keys 0 .. Tk - Tq + i."""
    tk = tq if tk is None else tk
    q = torch.arange(tk - tq, tk, device=device)[:, None]
    k = torch.arange(tk, device=device)[None, :]
    return k <= q


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, Tk) with 1 = real token, 0 = padding -> (B, 1, 1, Tk) bool."""
    return attention_mask.bool()[:, None, None, :]


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """AND of boolean masks (None = no constraint). A query row left with no allowed key (a padding
    query under left padding) is opened to every key so SDPA returns finite values; such rows are
    padding and their outputs are never used."""
    out = None
    for m in masks:
        if m is None:
            continue
        out = m if out is None else out & m
    if out is not None:
        out = out | ~out.any(-1, keepdim=True)
    return out


# ------------------------------------------------------------------------------------------- cache
class KVCache:
    """Preallocated keys/values of one attention layer: (B, Hkv, max_len, Dh). `update` writes the new
    positions in place and returns views of everything so far: no per-step concatenation."""

    def __init__(self, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype=torch.float32, device=None):
        self.k = torch.empty(batch, kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.pos = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        if self.pos + t > self.max_len:
            raise RuntimeError(f"KV cache full: {self.pos} + {t} > {self.max_len} positions")
        self.k[:, :, self.pos : self.pos + t] = k
        self.v[:, :, self.pos : self.pos + t] = v
        self.pos += t
        return self.k[:, :, : self.pos], self.v[:, :, : self.pos]

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search)."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


class StaticKV:
    """Keys/values of a fixed context for cross-attention (image tokens during captioning): computed
    from the context on first use, then reused at every decoding step instead of re-projected."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.layout: tuple | None = None  # what a user needs to read k / v (Flamingo: media count, latents each)

    @property
    def filled(self) -> bool:
        return self.k is not None

    def reorder(self, index: torch.Tensor) -> None:
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)


# ------------------------------------------------------------------------------------------- rotary
class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer; Llama's rotate-half layout). Returns the tables that
    `apply_rotary` reads, (T, Dh) each for positions `positions`: cos, and sin with the sign of
    rotate-half folded in (its first half negated)."""

    def __init__(self, head_dim: int, theta: float = 10000.0, max_len: int = 4096):
        super().__init__()
        self.head_dim, self.theta, self.max_len = head_dim, theta, max_len
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self) -> torch.Tensor:
        # computed on the CPU even when the model is built on the meta device (a meta arange would import
        # PyTorch's Python meta kernels; the table is tiny), then moved where the buffer lives
        return 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device="cpu")
                                     / self.head_dim))

    def reset_buffers(self) -> None:
        """Recompute inv_freq (after a model built on the meta device is materialised)."""
        self.inv_freq = self._inv_freq().to(self.inv_freq.device)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq
        return torch.cat([freqs, freqs], -1).cos(), torch.cat([-freqs.sin(), freqs.sin()], -1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, Dh); cos / signed_sin from RotaryEmbedding: (T, Dh) or (B, T, Dh).

    x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1] written as roll(x) = [x2, x1] times
    the signed sin: one op where slicing, negating and concatenating took four (a decode step runs one
    per layer), and bit-identical since negation is exact."""
    if cos.ndim == 3:
        cos, signed_sin = cos[:, None], signed_sin[:, None]
    return (x * cos + torch.roll(x, x.shape[-1] // 2, -1) * signed_sin).to(x.dtype)


# ------------------------------------------------------------------------------------------- attention
class Attention(nn.Module):
    """Multi-head attention. Self-attention uses one fused `qkv` projection; with `kv_dim` set it is
    cross-attention (`q` from x, `kv` from the context). `kv_heads` < `heads` gives grouped-query
    attention. Shapes: x (B, Tq, dim), context (B, Tk, kv_dim) -> (B, Tq, out_dim or dim).

    qk_norm (self-attention): RMSNorm on queries and keys before the rotary positions, "head" over each
    head's Dh channels (Qwen3) or "full" over the whole projection (OLMo 2); Molmo2's LMs use either."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int | None = None,
        kv_heads: int | None = None,
        kv_dim: int | None = None,
        bias: bool = True,
        out_bias: bool | None = None,
        dropout: float = 0.0,
        out_dim: int | None = None,
        qk_norm: str | None = None,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.heads = heads
        self.kv_heads = kv_heads or heads
        if heads % self.kv_heads:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({self.kv_heads})")
        self.head_dim = head_dim or dim // heads
        if head_dim is None and dim % heads:
            raise ValueError(f"dim ({dim}) is not divisible by heads ({heads})")
        self.cross = kv_dim is not None
        q_out, kv_out = heads * self.head_dim, 2 * self.kv_heads * self.head_dim
        if self.cross:
            self.q = nn.Linear(dim, q_out, bias=bias)
            self.kv = nn.Linear(kv_dim, kv_out, bias=bias)
        else:
            self.qkv = nn.Linear(dim, q_out + kv_out, bias=bias)
        self.out = nn.Linear(q_out, out_dim or dim, bias=bias if out_bias is None else out_bias)
        self.dropout = dropout
        self.qk_norm = qk_norm
        if qk_norm not in (None, "head", "full"):
            raise ValueError(f"qk_norm must be None, 'head' or 'full', got {qk_norm!r}")
        if qk_norm is not None:
            full = qk_norm == "full"
            self.q_norm = RMSNorm(q_out if full else self.head_dim, norm_eps)
            self.k_norm = RMSNorm(self.kv_heads * self.head_dim if full else self.head_dim, norm_eps)

    def _split(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | StaticKV | None = None,
        plan: Plan | None = None,
    ) -> torch.Tensor:
        """cache: a KVCache (self-attention, grows each step) or, for cross-attention, a StaticKV
        (the context's keys/values, projected once; `context` may then be None).
        plan (self-attention; mmfm.nn.plan): x may be the real tokens of a padded batch, and only the
        last positions' queries may be wanted; masks, rope and cache are always for the padded (B, T)."""
        b, t, _ = x.shape
        hd_q = self.heads * self.head_dim
        hd_kv = self.kv_heads * self.head_dim
        if self.cross:
            if plan is not None:
                raise ValueError("cross-attention takes no plan")
            q = self._split(self.q(x), self.heads)
            if isinstance(cache, StaticKV) and cache.filled:
                k, v = cache.k, cache.v
            else:
                if context is None:
                    raise ValueError("cross-attention needs a context")
                k, v = self.kv(context).split([hd_kv, hd_kv], -1)
                k, v = self._split(k, self.kv_heads), self._split(v, self.kv_heads)
                if isinstance(cache, StaticKV):
                    cache.k, cache.v = k, v
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        else:
            qkv = self.qkv(x)
            if plan is not None:
                qkv = plan.padded(qkv)
                b, t = qkv.shape[:2]
            q, k, v = (self._normed_qkv if self.qk_norm else self._fused_qkv)(qkv, rope)
        if isinstance(cache, KVCache):
            k, v = cache.update(k, v)
        if plan is not None:
            q, mask = plan.queries(q, mask)
            t = q.shape[2]
        if is_causal and (k.shape[2] != t or mask is not None):
            # SDPA's is_causal aligns top-left; with a cache or an extra mask, build the mask ourselves.
            mask = combine_masks(mask, causal_mask(t, k.shape[2], device=x.device))
            is_causal = False
        if is_causal and t == 1:
            is_causal = False
        y = self._sdpa(q, k, v, mask, is_causal).transpose(1, 2).reshape(b, t, hd_q)
        if plan is not None:
            y = plan.output(y)
        return self.out(y)

    def _fused_qkv(self, qkv: torch.Tensor, rope):
        """(B, T, C) projections -> q, k, v as (B, heads, T, Dh)."""
        b, t, _ = qkv.shape
        hd_q, hd_kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        # queries and keys stay one (B, heads + kv_heads, T, Dh) view, rotated together
        qk = qkv[..., : hd_q + hd_kv].view(b, t, self.heads + self.kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            qk = apply_rotary(qk, *rope)
        q, k = qk.split([self.heads, self.kv_heads], 1)
        return q, k, self._split(qkv[..., hd_q + hd_kv :], self.kv_heads)

    def _normed_qkv(self, qkv: torch.Tensor, rope):
        """As _fused_qkv, with the q/k RMSNorms applied before the rotation."""
        b, t, _ = qkv.shape
        hd_q, hd_kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = qkv.split([hd_q, hd_kv, hd_kv], -1)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.view(b, t, self.heads, self.head_dim), k.view(b, t, self.kv_heads, self.head_dim)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return q, k, self._split(v, self.kv_heads)

    def _sdpa(self, q, k, v, mask, is_causal):
        p = self.dropout if self.training else 0.0
        g = self.heads // self.kv_heads
        b, _, t, d = q.shape
        if g > 1 and t == 1 and not is_causal and (mask is None or (mask.shape[1] == 1 and mask.shape[2] == 1)):
            # One query per head (a decoding step): the g query heads that share a key/value head are
            # read as g queries of that head, so no kernel expands K/V to every head. Same numbers, faster
            # on CPU (bench/RESULTS.md, "The decoding step's attention with grouped-query heads").
            y = F.scaled_dot_product_attention(q.reshape(b, self.kv_heads, g, d), k, v, attn_mask=mask,
                                               dropout_p=p)
            return y.reshape(b, self.heads, 1, d)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=p,
                                              enable_gqa=self.kv_heads != self.heads)
