"""SAM's image encoder: a ViT over 16 px patches (1024 px -> 64 x 64 tokens) with a learned absolute
position embedding, blocks that attend within 14 x 14 windows except a few global ones, decomposed
relative position biases (MViTv2), and a conv / LayerNorm2d neck to the prompt dimension.

Shapes: pixels (B, 3, S, S) -> tokens (B, S/p, S/p, C) -> embedding (B, prompt_dim, S/p, S/p).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.models.sam.config import SAMConfig
from mmfm.nn.blocks import MLP, LayerNorm2d


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nWin, window, window, C), padding bottom/right to whole windows."""
    b, h, w, c = x.shape
    ph, pw = (window - h % window) % window, (window - w % window) % window
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    hp, wp = padded
    h, w = hw
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w].contiguous() if (hp > h or wp > w) else x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position table (2 * max - 1, C), linearly resized if needed -> (q_size, k_size, C)."""
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        rel_pos = F.interpolate(rel_pos.t()[None], size=max_dist, mode="linear")[0].t()
    q = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    return rel_pos[((q - k) + (k_size - 1) * max(q_size / k_size, 1.0)).long()]


class RelPosAttention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) grid with decomposed relative positions added
    to the logits: bias[q, k] = q . Rh[qh, kh] + q . Rw[qw, kw]. Runs on SDPA with the bias as an
    additive mask."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, use_rel_pos: bool = True,
                 input_size: tuple[int, int] | None = None):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.use_rel_pos:
            rh = get_rel_pos(h, h, self.rel_pos_h)  # (h, h, C)
            rw = get_rel_pos(w, w, self.rel_pos_w)
            rq = q.reshape(b, self.heads, h, w, self.head_dim)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", rq, rh)
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", rq, rw)
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.heads, h * w, h * w)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(y.transpose(1, 2).reshape(b, h, w, -1))


class EncoderBlock(nn.Module):
    """Pre-LN block; window_size 0 = global attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, window_size: int, input_size: tuple[int, int],
                 use_rel_pos: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = RelPosAttention(dim, heads, use_rel_pos=use_rel_pos, input_size=size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio), act="gelu")
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1:3]
            x, padded = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, padded, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    def __init__(self, c: SAMConfig):
        super().__init__()
        self.img_size = c.image_size
        grid = c.image_size // c.patch_size
        self.patch_embed = nn.Conv2d(3, c.encoder_dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, c.encoder_dim)) if c.use_abs_pos else None
        self.blocks = nn.ModuleList(
            EncoderBlock(c.encoder_dim, c.encoder_heads, c.mlp_ratio,
                         0 if i in c.global_attn_indexes else c.window_size, (grid, grid), c.use_rel_pos)
            for i in range(c.encoder_depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(c.encoder_dim, c.prompt_dim, kernel_size=1, bias=False),
            LayerNorm2d(c.prompt_dim),
            nn.Conv2d(c.prompt_dim, c.prompt_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(c.prompt_dim),
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))
