"""Feed-forward layers, norms and transformer blocks shared by every model."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmfm.nn.attention import Attention, KVCache, StaticKV
from mmfm.nn.norms import RMSNorm
from mmfm.nn.plan import Plan


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation of OpenAI's original CLIP weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": QuickGELU,
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """fc1 -> activation -> fc2. (B, T, dim) -> (B, T, out_dim or dim)."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", bias: bool = True, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, out_dim or dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), as Llama. gate and up are one fused (dim -> 2 * hidden) matmul,
    stored gate first; loaders concatenate Llama's separate gate_proj / up_proj.
    (B, T, dim) -> (B, T, out_dim or dim)."""

    def __init__(self, dim: int, hidden: int, bias: bool = False, act: str = "silu", out_dim: int | None = None,
                 out_bias: bool | None = None):
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=bias)
        self.down = nn.Linear(hidden, out_dim or dim, bias=bias if out_bias is None else out_bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, -1)
        return self.down(self.act(gate) * up)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (SAM's necks and upscalers, ConvNeXt)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def norm(kind: str, dim: int, eps: float | None = None) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=1e-5 if eps is None else eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=1e-6 if eps is None else eps)
    raise ValueError(f"unknown norm {kind!r}; use layernorm or rmsnorm")


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    """Pre-LN block: x + attn(norm1(x)), then x + mlp(norm2(x)); post_norm=True normalises each
    sub-layer's output instead, x + norm1(attn(x)) (OLMo 2's layout, Molmo2's "norm_after"). With
    `cross_dim` it also has a cross-attention sub-layer between the two (x + xattn(norm_x(x), context)),
    as a decoder layer.
    Shapes: x (B, T, dim) -> (B, T, dim)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        norm_kind: str = "layernorm",
        norm_eps: float | None = None,
        mlp_kind: str = "mlp",
        hidden: int | None = None,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = True,
        mlp_bias: bool | None = None,
        cross_dim: int | None = None,
        layer_scale: float | None = None,
        qk_norm: str | None = None,
        post_norm: bool = False,
        out_bias: bool | None = None,
    ):
        super().__init__()
        hidden = hidden or int(dim * mlp_ratio)
        self.post_norm = post_norm
        self.norm1 = norm(norm_kind, dim, norm_eps)
        self.attn = Attention(dim, heads, head_dim=head_dim, kv_heads=kv_heads, bias=bias, out_bias=out_bias,
                              qk_norm=qk_norm, norm_eps=1e-6 if norm_eps is None else norm_eps)
        self.cross = None
        if cross_dim is not None:
            self.norm_x = norm(norm_kind, dim, norm_eps)
            self.cross = Attention(dim, heads, head_dim=head_dim, kv_dim=cross_dim, bias=bias)
        self.norm2 = norm(norm_kind, dim, norm_eps)
        mlp_bias = bias if mlp_bias is None else mlp_bias
        if mlp_kind == "swiglu":
            self.mlp = SwiGLU(dim, hidden, bias=mlp_bias)
        else:
            self.mlp = MLP(dim, hidden, act, bias=mlp_bias)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope=None,
        cache: KVCache | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        plan: Plan | None = None,
    ) -> torch.Tensor:
        """plan (mmfm.nn.plan): x may be the real tokens of a padded batch, and the output only the last
        positions (every position still writes its keys/values to the cache)."""
        if self.post_norm:
            h = self.norm1(self.attn(x, mask=mask, is_causal=is_causal, rope=rope, cache=cache, plan=plan))
        else:
            h = self.attn(self.norm1(x), mask=mask, is_causal=is_causal, rope=rope, cache=cache, plan=plan)
        if plan is not None:
            x = plan.residual(x)
        x = x + self.ls1(h)
        if self.cross is not None:
            x = x + self.cross(self.norm_x(x), context=context, mask=context_mask)
        if self.post_norm:
            return x + self.ls2(self.norm2(self.mlp(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class CrossAttentionBlock(nn.Module):
    """x + xattn(norm_q(x), norm_kv(context)), then x + mlp(norm2(x)): a residual cross-attention
    block with its own MLP (open_clip's multimodal decoder layers, CoCa). x (B, T, dim), context
    (B, S, context_dim or dim) -> (B, T, dim)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, mlp_ratio: float = 4.0,
                 act: str = "gelu", norm_eps: float | None = None, hidden: int | None = None):
        super().__init__()
        context_dim = context_dim or dim
        self.norm_q = norm("layernorm", dim, norm_eps)
        self.norm_kv = norm("layernorm", context_dim, norm_eps)
        self.attn = Attention(dim, heads, kv_dim=context_dim)
        self.norm2 = norm("layernorm", dim, norm_eps)
        self.mlp = MLP(dim, hidden or int(dim * mlp_ratio), act)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, context_mask: torch.Tensor | None = None,
                cache: StaticKV | None = None) -> torch.Tensor:
        """cache: a StaticKV holding the context's keys/values after the first call (decoding)."""
        ctx = None if cache is not None and cache.filled else self.norm_kv(context)
        x = x + self.attn(self.norm_q(x), context=ctx, mask=context_mask, cache=cache)
        return x + self.mlp(self.norm2(x))


class AttentionalPooler(nn.Module):
    """`queries` learned vectors attend to a token sequence (CoCa, open_clip): (B, S, context_dim) ->
    (B, queries, dim). Keys are LayerNorm'd, queries too."""

    def __init__(self, dim: int, context_dim: int, heads: int = 8, queries: int = 256):
        super().__init__()
        self.query = nn.Parameter(torch.randn(queries, dim))
        self.attn = Attention(dim, heads, kv_dim=context_dim)
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.ln_q(self.query).to(x.dtype).expand(x.shape[0], -1, -1)
        return self.attn(q, context=self.ln_k(x))


def frozen_to_eval(*modules: nn.Module) -> None:
    """Put each module whose parameters are all frozen in eval mode. A frozen tower with BatchNorm
    (the world CLIP's conv stem) would otherwise normalise with batch statistics in training and
    update its running ones: it would drift, and train on other features than it infers with."""
    for m in modules:
        if not any(p.requires_grad for p in m.parameters()):
            m.eval()


class Transformer(nn.Module):
    """A stack of TransformerBlocks with optional gradient checkpointing. Returns the final hidden
    state and, when asked, every layer's input and the final output (layers + 1 tensors)."""

    def __init__(self, layers: int, dim: int, heads: int, **block_kwargs):
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, **block_kwargs) for _ in range(layers))
        self.grad_checkpointing = False

    def forward(self, x, mask=None, is_causal=False, rope=None, caches=None, context=None, context_mask=None,
                output_hidden_states: bool = False, before_layer=None, plan: Plan | None = None):
        """before_layer(i, x) -> x, when given, runs before block i (Flamingo's gated cross-attention
        sits there, outside the frozen blocks). plan (mmfm.nn.plan): how the blocks run; the output is
        then (B, T or keep_last, dim). Unpadded tokens do not go with before_layer, output_hidden_states
        or a context, which need the padded layout."""
        if plan is not None and plan.tokens is not None and (
            before_layer is not None or output_hidden_states or context is not None
        ):
            raise ValueError("unpadded tokens do not go with before_layer, output_hidden_states or a context")
        hidden = [x] if output_hidden_states else None
        last = len(self.blocks) - 1
        inner = plan.for_block(last=False) if plan is not None else None
        for i, blk in enumerate(self.blocks):
            if before_layer is not None:
                x = before_layer(i, x)
            cache = caches[i] if caches is not None else None
            step = plan if i == last else inner
            if self.grad_checkpointing and self.training and cache is None:
                run = functools.partial(blk, mask=mask, is_causal=is_causal, rope=rope, context=context,
                                        context_mask=context_mask, plan=step)
                x = checkpoint(run, x, use_reentrant=False)
            else:
                x = blk(x, mask, is_causal, rope, cache, context, context_mask, step)
            if hidden is not None:
                hidden.append(x)
        if plan is not None:
            x = plan.leave(x)
        return x, (tuple(hidden) if hidden is not None else None)


__all__ = [
    "MLP",
    "SwiGLU",
    "RMSNorm",
    "LayerNorm2d",
    "CrossAttentionBlock",
    "AttentionalPooler",
    "QuickGELU",
    "LayerScale",
    "TransformerBlock",
    "Transformer",
    "norm",
    "activation",
    "frozen_to_eval",
]
