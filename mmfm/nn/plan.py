"""How a decoder's forward pass runs, kept apart from what it computes.

Two CPU shortcuts that give the same numbers as the plain pass (tests/test_nn.py checks both):

- keep_last: a prefill needs logits at its last positions only. The last block still writes every
  position's keys and values to the cache but computes queries, attention output and MLP for the kept
  positions alone; the final norm and LM head likewise.
- Unpadded: in a batch of prompts of different lengths, the token-wise layers (norms, projections,
  MLPs) run on the real tokens only, as one (1, N, C) row; self-attention scatters them back to the
  padded (B, T) layout for its masks, rotary tables and cache.

A `Plan` is made once per forward by the decoder (`Plan.for_decoder`) and handed down; a model that
passes none gets the plain pass. Decode steps (one token a row) never need one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Gathering and scattering the real tokens costs about what 1/16 of the rows' matmuls do at SmolLM2's
# width, so a batch with less padding than that stays padded.
UNPAD_MIN_PADDING = 1 / 16


class Unpadded:
    """The real tokens of a padded batch. keep: (B, T) bool, True = real token."""

    def __init__(self, keep: torch.Tensor):
        self.batch, self.length = keep.shape
        self.index = keep.flatten().nonzero().squeeze(1)  # (N,) positions in the flattened (B * T)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (1, N, C)."""
        return x.reshape(-1, x.shape[-1]).index_select(0, self.index)[None]

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(1, N, C) -> (B, T, C), zeros at the padding."""
        out = x.new_zeros(self.batch * self.length, x.shape[-1])
        return out.index_copy(0, self.index, x[0]).view(self.batch, self.length, -1)


@dataclass(frozen=True)
class Plan:
    """keep_last > 0: compute only the last `keep_last` positions (in the last block); tokens: the
    hidden states are the real tokens of a padded batch, (1, N, dim)."""

    keep_last: int = 0
    tokens: Unpadded | None = None

    @classmethod
    def for_decoder(cls, attention_mask: torch.Tensor | None, past: int, t: int, logits_to_keep: int,
                    unpad: bool = True) -> Plan | None:
        """The plan for `t` new positions after `past` cached ones; None when nothing is to be gained.
        unpad=False where a layer must see the padded layout (hidden states asked for, a hook between
        blocks)."""
        tokens = None
        if unpad and attention_mask is not None and t > 1:
            keep = attention_mask[:, past : past + t].bool()
            if (keep.numel() - int(keep.sum())) >= keep.numel() * UNPAD_MIN_PADDING:
                tokens = Unpadded(keep)
        keep_last = logits_to_keep if 0 < logits_to_keep < t else 0
        return cls(keep_last, tokens) if keep_last or tokens is not None else None

    def for_block(self, last: bool) -> Plan:
        """Only the last block drops positions."""
        return self if last or not self.keep_last else Plan(0, self.tokens)

    # -------------------------------------------------------------------------------- the decoder
    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) embeddings -> what the first block takes."""
        return self.tokens.pack(x) if self.tokens is not None else x

    def leave(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's output -> (B, T or keep_last, C)."""
        if self.tokens is not None and not self.keep_last:
            return self.tokens.unpack(x)
        return x

    # -------------------------------------------------------------------------------- a block
    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The block's input, cut to the positions its attention answered for."""
        if not self.keep_last:
            return x
        if self.tokens is not None:
            x = self.tokens.unpack(x)
        return x[:, -self.keep_last :]

    # -------------------------------------------------------------------------------- attention
    def padded(self, qkv: torch.Tensor) -> torch.Tensor:
        """Projected tokens -> the padded (B, T, C) layout that masks, rotary tables and caches use."""
        return self.tokens.unpack(qkv) if self.tokens is not None else qkv

    def queries(self, q: torch.Tensor, mask: torch.Tensor | None):
        """(B, H, T, Dh) queries and their mask -> only the kept positions'."""
        if not self.keep_last:
            return q, mask
        if mask is not None and mask.shape[-2] > 1:
            mask = mask[..., -self.keep_last :, :]
        return q[:, :, -self.keep_last :], mask

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """Attention output (B, T', C) -> the layout of the block's hidden states."""
        if self.tokens is not None and not self.keep_last:
            return self.tokens.pack(y)
        return y


__all__ = ["Plan", "Unpadded", "UNPAD_MIN_PADDING"]
