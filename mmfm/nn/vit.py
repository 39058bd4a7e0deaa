"""VisionTransformer: patch embedding, class token, learned position embedding (resizable to a new
grid), pre-LN blocks, every layer's hidden state on request, pooled and projected output."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.nn.blocks import AttentionalPooler, Transformer, norm


@dataclass
class ViTOutput:
    pooled: torch.Tensor  # (B, output_dim or width): normalised pooled token, projected
    last_hidden_state: torch.Tensor  # (B, T, width): last block's output, before the final norm
    hidden_states: tuple | None  # layers + 1 tensors (B, T, width); [0] is the block input (after ln_pre)


class VisionTransformer(nn.Module):
    """images (B, 3, H, W) -> ViTOutput. T = grid**2 (+1 with a class token)."""

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        output_dim: int | None = 512,
        mlp_dim: int | None = None,
        class_token: bool = True,
        ln_pre: bool = True,
        pool: str = "cls",  # cls | mean | attn (a learned query) | none (ln_post on every token) | tokens (no head)
        norm_eps: float = 1e-5,
        patch_bias: bool = False,
        layer_scale: float | None = None,
        stem: str = "patch",  # patch: one strided conv (ViT, CLIP); conv: a small CNN (hybrid ViT)
        attn_pool_heads: int = 8,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size, self.width = image_size, patch_size, width
        self.grid = image_size // patch_size
        if stem == "patch":
            self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=patch_bias)
        elif stem == "conv":
            self.patch_embed = ConvStem(width, patch_size)
        else:
            raise ValueError(f"unknown stem {stem!r}; use patch or conv")
        scale = width**-0.5
        self.class_token = nn.Parameter(scale * torch.randn(width)) if class_token else None
        n_tokens = self.grid**2 + (1 if class_token else 0)
        self.pos_embed = nn.Parameter(scale * torch.randn(n_tokens, width))
        self.ln_pre = norm("layernorm", width, norm_eps) if ln_pre else nn.Identity()
        self.transformer = Transformer(layers, width, heads, mlp_ratio=mlp_ratio, hidden=mlp_dim, act=act,
                                       norm_eps=norm_eps, layer_scale=layer_scale)
        self.pool = pool
        head = pool != "tokens"
        self.attn_pool = None
        if pool == "attn":  # open_clip's attentional_pool with one query: attention pooling, then ln_post, proj
            dim = output_dim or width
            self.attn_pool = AttentionalPooler(dim, width, attn_pool_heads, 1)
            self.ln_post = norm("layernorm", dim, norm_eps)
            self.proj = nn.Linear(dim, dim, bias=False) if output_dim else None
        elif pool in ("cls", "mean", "none", "tokens"):
            self.ln_post = norm("layernorm", width, norm_eps) if head else None
            self.proj = nn.Linear(width, output_dim, bias=False) if output_dim and head else None
        else:
            raise ValueError(f"unknown pool {pool!r}; use cls, mean, attn, none or tokens")

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.class_token is not None else 0

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, T, width), position embedding added (resized when H, W differ)."""
        x = self.patch_embed(images.to(self.pos_embed.dtype))
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        if self.class_token is not None:
            x = torch.cat([self.class_token.to(x.dtype).expand(x.shape[0], 1, -1), x], 1)
        pos = self.pos_embed if (gh, gw) == (self.grid, self.grid) else self._resized_pos(gh, gw)
        return x + pos.to(x.dtype)

    def _resized_pos(self, gh: int, gw: int) -> torch.Tensor:
        p = self.num_prefix_tokens
        return resize_pos_embed(self.pos_embed, (gh, gw), num_prefix_tokens=p)

    def forward(self, images: torch.Tensor, output_hidden_states: bool = False) -> ViTOutput:
        x = self.ln_pre(self.embed(images))
        x, hidden = self.transformer(x, output_hidden_states=output_hidden_states)
        if self.pool == "tokens":
            return ViTOutput(x, x, hidden)
        if self.pool == "cls":
            pooled = self.ln_post(x[:, 0])
        elif self.pool == "mean":
            pooled = self.ln_post(x[:, self.num_prefix_tokens :].mean(1))
        elif self.pool == "attn":
            pooled = self.ln_post(self.attn_pool(x)[:, 0])
        else:
            pooled = self.ln_post(x)
        if self.proj is not None:
            pooled = self.proj(pooled)
        return ViTOutput(pooled, x, hidden)

    def resize_grid(self, image_size: int) -> None:
        """Change the input resolution for good: the position embedding is resampled (bicubic)."""
        g = image_size // self.patch_size
        with torch.no_grad():
            new = resize_pos_embed(self.pos_embed.data, (g, g), self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(new)
        self.image_size, self.grid = image_size, g


def resize_pos_embed(pos: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """(P + g*g, C) -> (P + gh*gw, C): bicubic resampling of the patch part (as open_clip / timm,
    align_corners=False, antialias off), prefix tokens kept as they are."""
    prefix, grid = pos[:num_prefix_tokens], pos[num_prefix_tokens:]
    old = int(math.isqrt(grid.shape[0]))
    if old * old != grid.shape[0]:
        raise ValueError(f"position embedding of {grid.shape[0]} patch tokens is not a square grid")
    if (old, old) == tuple(new_grid):
        return pos
    g = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=tuple(new_grid), mode="bicubic", align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([prefix, g], 0)


class ConvStem(nn.Module):
    """A small CNN in place of the patchify convolution (a "hybrid" ViT, as in the ViT paper's R50+ViT):
    log2(patch) stages of conv3x3 -> BatchNorm -> ReLU -> 2x2 max-pool, ending at `width` channels on
    the same token grid. Why: a plain ViT has no translation-invariant prior, and on the Shapes world
    at 64 px with a 2-core budget it learns color at once but shape only slowly (bench/RESULTS.md).
    (B, 3, H, W) -> (B, width, H/patch, W/patch)."""

    def __init__(self, width: int, patch_size: int):
        super().__init__()
        n = int(math.log2(patch_size))
        if 2**n != patch_size or n < 1:
            raise ValueError(f"a conv stem needs a power-of-two patch size, got {patch_size}")
        chans = [3] + [min(width, 16 * 2**i) for i in range(n - 1)] + [width]
        layers = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [
                nn.Conv2d(a, b, 3, padding=1, bias=False),
                nn.BatchNorm2d(b),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
