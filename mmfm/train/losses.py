"""Losses, kept apart from the models. The contrastive loss works on one process or across a
torch.distributed group: features are all-gathered with gradients and each rank scores its own rows
against the global batch (labels offset by rank), so the effective batch is the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, D) on each rank -> (world * B, D), differentiable (the backward sums each rank's gradient
    to the rank that owns the rows)."""
    rank, world = _world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), 0)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              negatives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE, averaged over both directions: (CE(image->text) + CE(text->image)) / 2.

    features: (B, D) L2-normalised on this rank; logit_scale: the exp'd temperature. Across ranks the
    local rows are scored against the gathered global batch. `negatives` (N, D), if given, are extra
    text embeddings that enter only the image->text softmax (NegCLIP's hard negatives)."""
    rank, world = _world()
    all_img = gather_with_grad(image_features)
    all_txt = gather_with_grad(text_features)
    b = image_features.shape[0]
    labels = torch.arange(b, device=image_features.device) + rank * b
    texts = all_txt if negatives is None else torch.cat([all_txt, gather_with_grad(negatives)], 0)
    logits_i = logit_scale * image_features @ texts.T
    logits_t = logit_scale * text_features @ all_img.T
    return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2
