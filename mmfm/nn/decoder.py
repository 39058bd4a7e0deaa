"""A decoder-only language model, Llama-style or GPT-style from one config.

Llama: RMSNorm, rotary positions (the config's theta), SwiGLU, grouped-query attention, no biases.
GPT:   LayerNorm, learned positions, GELU MLP, biases.
Both: pre-norm blocks, a final norm, an LM head tied to the embeddings or not, a KV cache, and
`inputs_embeds` so that image features can be spliced into the sequence (LLaVA, Molmo).

Shapes: input_ids (B, T) or inputs_embeds (B, T, dim); attention_mask (B, past + T) with 1 = token,
0 = padding (left padding for batched generation) -> logits (B, T or logits_to_keep, vocab).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from mmfm.config import Config
from mmfm.errors import ConfigError
from mmfm.nn.attention import KVCache, RotaryEmbedding, causal_mask, combine_masks
from mmfm.nn.blocks import ACTIVATIONS, Transformer, norm
from mmfm.nn.plan import Plan


@dataclass
class DecoderConfig(Config):
    POSITIVE: ClassVar[tuple[str, ...]] = ("vocab_size", "dim", "layers", "heads", "kv_heads", "head_dim", "hidden",
                                           "max_seq_len", "norm_eps", "rope_theta")

    vocab_size: int = 49152
    dim: int = 576
    layers: int = 30
    heads: int = 9
    kv_heads: int | None = None  # None = heads (multi-head); fewer = grouped-query attention
    head_dim: int | None = None  # None = dim // heads
    hidden: int = 1536  # feed-forward width
    style: Literal["llama", "gpt"] = "llama"
    act: str | None = None  # None = silu (llama, inside SwiGLU) / gelu_tanh (gpt)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048  # context window (and the learned position table of gpt)
    tie_embeddings: bool = True
    attn_bias: bool = False  # q/k/v biases (the output projection follows it unless out_bias says otherwise)
    out_bias: bool | None = None
    mlp_bias: bool = False
    qk_norm: Literal["none", "head", "full"] = "none"  # RMSNorm on q and k: per head (Qwen3) | whole (OLMo 2)
    post_norm: bool = False  # normalise each sub-layer's output instead of its input (OLMo 2)
    extra_vocab: int = 0  # embedding rows past the head's vocabulary (Molmo2's image tokens: input only)
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict)  # provenance (source format, quantization), not used by the model

    def validate(self) -> None:
        self.kv_heads = self.kv_heads or self.heads
        if self.heads % self.kv_heads:
            raise ConfigError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.head_dim is None:
            if self.dim % self.heads:
                raise ConfigError(f"dim ({self.dim}) is not divisible by heads ({self.heads}); set head_dim")
            self.head_dim = self.dim // self.heads
        if self.act is None:
            self.act = "silu" if self.style == "llama" else "gelu_tanh"
        if self.extra_vocab < 0:
            raise ConfigError(f"DecoderConfig.extra_vocab must be >= 0, got {self.extra_vocab}")
        if self.extra_vocab and self.tie_embeddings:
            raise ConfigError("extra_vocab rows are input-only: they need an untied LM head (tie_embeddings=false)")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"DecoderConfig.act must be one of {', '.join(ACTIVATIONS)}, got {self.act!r}")

    def parameters(self) -> int:
        d, hd = self.dim, self.head_dim
        per_layer = d * (self.heads + 2 * self.kv_heads) * hd + self.heads * hd * d + 3 * d * self.hidden
        return self.layers * per_layer + self.vocab_size * d * (1 if self.tie_embeddings else 2) + self.extra_vocab * d

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))


@dataclass
class DecoderOutput:
    """What every decoder-based model's forward returns (DecoderLM, LLaVA, Flamingo, CoCa's captioner),
    as transformers' ModelOutput: fields a call did not compute are None."""

    logits: torch.Tensor | None = None  # (B, T', vocab); None with compute_logits=False or with labels
    last_hidden: torch.Tensor | None = None  # (B, T or logits_to_keep, dim), after the final norm
    hidden_states: tuple[torch.Tensor, ...] | None = None  # layers + 1, before the final norm
    loss: torch.Tensor | None = None  # with labels: mean next-token cross-entropy over supervised tokens
    num_tokens: int = 0  # the number of supervised tokens behind `loss`


class DecoderLM(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size + c.extra_vocab, c.dim)
        llama = c.style == "llama"
        self.pos_embed = None if llama else nn.Embedding(c.max_seq_len, c.dim)
        self.rotary = RotaryEmbedding(c.head_dim, theta=c.rope_theta, max_len=c.max_seq_len) if llama else None
        self.transformer = Transformer(
            c.layers, c.dim, c.heads,
            hidden=c.hidden, act=c.act, kv_heads=c.kv_heads, head_dim=c.head_dim,
            norm_kind="rmsnorm" if llama else "layernorm", norm_eps=c.norm_eps,
            mlp_kind="swiglu" if llama else "mlp", bias=c.attn_bias, mlp_bias=c.mlp_bias, out_bias=c.out_bias,
            qk_norm=None if c.qk_norm == "none" else c.qk_norm, post_norm=c.post_norm,
        )
        self.norm = norm("rmsnorm" if llama else "layernorm", c.dim, c.norm_eps)
        self.lm_head = nn.Linear(c.dim, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype  # (not the embedding's: a low-bit table has codes, not a weight)

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    def new_caches(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> list[KVCache]:
        """One preallocated KV cache per layer for `max_len` positions (prompt + new tokens)."""
        c = self.config
        if max_len > c.max_seq_len:
            raise ConfigError(f"{max_len} positions exceed the model's context window of {c.max_seq_len}")
        return [KVCache(batch, c.kv_heads, max_len, c.head_dim, dtype=dtype or self.dtype, device=self.device)
                for _ in range(c.layers)]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        logits_to_keep: int = 0,
        output_hidden_states: bool = False,
        compute_logits: bool = True,
        before_layer=None,
        mask: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """compute_logits=False skips the LM head (logits is None): a trainer that needs logits only at
        its supervised positions applies `lm_head` to those rows of `last_hidden` itself.
        logits_to_keep > 0 (a prefill): the last block, the final norm and the head run on the last
        `logits_to_keep` positions only, the others just fill the last block's cache; last_hidden is
        then (B, logits_to_keep, dim) (not with output_hidden_states, which returns every position).
        before_layer(i, x) -> x runs before block i (Flamingo inserts its gated cross-attention there).
        mask: a boolean (B, 1, T, past + T) mask, True = may attend, used instead of the causal and padding
        one (Molmo2's bidirectional image block, packed sequences); position_ids should come with it."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.to(self.dtype)
        b, t, _ = x.shape
        past = caches[0].pos if caches else 0
        if past + t > self.config.max_seq_len:
            raise ConfigError(f"{past + t} positions exceed the model's context window of {self.config.max_seq_len}")
        if position_ids is None:
            position_ids = self.positions(attention_mask, past, t, x.device)

        # One mask for every layer. Without padding, prefill uses SDPA's own causal path and a
        # decode step attends to the whole cache, so no mask is built at all.
        is_causal, custom_mask = False, mask is not None
        if custom_mask:
            if mask.dtype != torch.bool or mask.ndim != 4 or mask.shape[-2:] != (t, past + t):
                raise ValueError(f"mask must be a boolean (B, 1, {t}, {past + t}) tensor, got {tuple(mask.shape)}")
            mask = combine_masks(mask)
        elif attention_mask is not None:
            mask = combine_masks(causal_mask(t, past + t, device=x.device)[None, None],
                                 attention_mask.bool()[:, None, None, : past + t])
        elif t > 1:
            is_causal = past == 0
            if not is_causal:
                mask = causal_mask(t, past + t, device=x.device)

        rope = None
        if self.rotary is not None:
            cos, sin = self.rotary(position_ids)
            rope = (cos.to(x.dtype), sin.to(x.dtype))
        else:
            x = x + self.pos_embed(position_ids)
        # CPU shortcuts with the same numbers (mmfm.nn.plan): real tokens only, last positions only
        plan = Plan.for_decoder(attention_mask, past, t, 0 if output_hidden_states else logits_to_keep,
                                unpad=not output_hidden_states and before_layer is None and not custom_mask)
        h, hidden = self.transformer(plan.enter(x) if plan is not None else x, mask=mask, is_causal=is_causal,
                                     rope=rope, caches=caches, output_hidden_states=output_hidden_states,
                                     before_layer=before_layer, plan=plan)
        h = self.norm(h[:, -logits_to_keep:] if logits_to_keep else h)
        logits = None
        if compute_logits:
            logits = self.lm_head(h)
        return DecoderOutput(logits=logits, last_hidden=h, hidden_states=hidden)

    @staticmethod
    def positions(attention_mask: torch.Tensor | None, past: int, t: int, device=None) -> torch.Tensor:
        """Position of each new token: its index among the real tokens of its row (left padding
        shifts a row's positions so that its first real token is at 0, as transformers does)."""
        if attention_mask is None:
            return torch.arange(past, past + t, device=device)[None]
        pos = attention_mask.long().cumsum(-1) - 1
        return pos.clamp_min(0)[:, past : past + t]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())


__all__ = ["DecoderConfig", "DecoderLM", "DecoderOutput"]
