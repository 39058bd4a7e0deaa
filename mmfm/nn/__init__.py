"""Building blocks shared by every model; nothing model-specific lives here."""

from mmfm.nn.attention import (
    Attention,
    KVCache,
    RotaryEmbedding,
    StaticKV,
    apply_rotary,
    causal_mask,
    combine_masks,
    padding_mask,
)
from mmfm.nn.blocks import (
    MLP,
    AttentionalPooler,
    CrossAttentionBlock,
    LayerNorm2d,
    LayerScale,
    QuickGELU,
    RMSNorm,
    SwiGLU,
    Transformer,
    TransformerBlock,
    activation,
    norm,
)
from mmfm.nn.text import TextOutput, TextTransformer
from mmfm.nn.vit import VisionTransformer, ViTOutput, resize_pos_embed

__all__ = [
    "Attention",
    "KVCache",
    "StaticKV",
    "RotaryEmbedding",
    "apply_rotary",
    "causal_mask",
    "combine_masks",
    "padding_mask",
    "MLP",
    "SwiGLU",
    "RMSNorm",
    "LayerNorm2d",
    "CrossAttentionBlock",
    "AttentionalPooler",
    "QuickGELU",
    "LayerScale",
    "Transformer",
    "TransformerBlock",
    "activation",
    "norm",
    "TextTransformer",
    "TextOutput",
    "VisionTransformer",
    "ViTOutput",
    "resize_pos_embed",
]
