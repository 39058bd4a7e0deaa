"""TextTransformer: CLIP's causal text encoder, pooled at the first end-of-text token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmfm.nn.attention import causal_mask, combine_masks, padding_mask
from mmfm.nn.blocks import Transformer, norm


@dataclass
class TextOutput:
    pooled: torch.Tensor  # (B, output_dim or width)
    last_hidden_state: torch.Tensor  # (B, T, width) after the final norm
    hidden_states: tuple | None


class TextTransformer(nn.Module):
    """input_ids (B, T) -> TextOutput. Causal attention, so tokens after the end-of-text token never
    change the pooled output; the pooled token is the first `eot_token_id` in each row (the last
    position when a row has none, e.g. after a truncation that dropped it)."""

    def __init__(
        self,
        vocab_size: int = 49408,
        context_length: int = 77,
        width: int = 512,
        layers: int = 12,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        output_dim: int | None = 512,
        mlp_dim: int | None = None,
        eot_token_id: int = 49407,
        norm_eps: float = 1e-5,
        causal: bool = True,
        embed_cls: bool = False,
        pad_token_id: int = 0,
        legacy_cls_mask: bool = True,
    ):
        super().__init__()
        self.context_length, self.eot_token_id, self.causal = context_length, eot_token_id, causal
        self.token_embed = nn.Embedding(vocab_size, width)
        # CoCa: a class token appended after the text is the pooled output; padding keys are masked.
        self.cls_embed = nn.Parameter(0.01 * torch.randn(width)) if embed_cls else None
        self.pad_token_id, self.legacy_cls_mask = pad_token_id, legacy_cls_mask
        self.pos_embed = nn.Parameter(0.01 * torch.randn(context_length + int(embed_cls), width))
        self.transformer = Transformer(layers, width, heads, mlp_ratio=mlp_ratio, hidden=mlp_dim, act=act,
                                       norm_eps=norm_eps)
        self.ln_final = norm("layernorm", width, norm_eps)
        self.proj = nn.Linear(width, output_dim, bias=False) if output_dim else None
        nn.init.normal_(self.token_embed.weight, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def eot_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_eot = input_ids == self.eot_token_id
        first = is_eot.int().argmax(-1)
        last = torch.full_like(first, input_ids.shape[1] - 1)
        return torch.where(is_eot.any(-1), first, last)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> TextOutput:
        if self.cls_embed is not None:
            return self._forward_cls(input_ids, output_hidden_states)
        b, t = input_ids.shape
        if t > self.context_length:
            raise ValueError(f"{t} tokens exceed the context length {self.context_length}")
        x = self.token_embed(input_ids) + self.pos_embed[:t].to(self.token_embed.weight.dtype)
        mask = None
        if attention_mask is not None:
            causal = causal_mask(t, device=x.device) if self.causal else None
            mask = combine_masks(padding_mask(attention_mask), causal)
        x, hidden = self.transformer(x, mask=mask, is_causal=self.causal and mask is None,
                                     output_hidden_states=output_hidden_states)
        x = self.ln_final(x)
        pooled = x[torch.arange(b, device=x.device), self.eot_positions(input_ids)]
        if self.proj is not None:
            pooled = self.proj(pooled)
        return TextOutput(pooled, x, hidden)

    def _forward_cls(self, input_ids: torch.Tensor, output_hidden_states: bool) -> TextOutput:
        """CoCa's text tower: pooled = proj(ln_final(class token appended last)); last_hidden_state =
        the text tokens BEFORE ln_final (what the multimodal decoder reads, as open_clip's CoCa).
        Keys that are padding are masked for every query; with `legacy_cls_mask` the key mask is
        shifted by one position, as in the released open_clip CoCa weights."""
        b, t = input_ids.shape
        if t > self.context_length:
            raise ValueError(f"{t} tokens exceed the context length {self.context_length}")
        x = self.token_embed(input_ids)
        x = torch.cat([x, self.cls_embed.to(x.dtype).expand(b, 1, -1)], 1)
        x = x + self.pos_embed[: t + 1].to(x.dtype)
        valid = input_ids != self.pad_token_id
        ones = valid.new_ones(b, 1)
        valid = torch.cat([ones, valid] if self.legacy_cls_mask else [valid, ones], 1)
        mask = combine_masks(valid[:, None, None, :], causal_mask(t + 1, device=x.device))
        x, hidden = self.transformer(x, mask=mask, output_hidden_states=output_hidden_states)
        pooled = self.ln_final(x[:, -1])
        if self.proj is not None:
            pooled = self.proj(pooled)
        return TextOutput(pooled, x[:, :-1], hidden)
