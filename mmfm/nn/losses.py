"""Losses, kept apart from the models. The contrastive loss works on one process or across a
torch.distributed group: features are all-gathered with gradients and each rank scores its own rows
against the global batch (labels offset by rank), so the effective batch is the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmfm.errors import InvalidPrompt
from mmfm.text.conversation import IGNORE


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


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (world * B, ...), for tensors that carry no gradient (ids, keys)."""
    rank, world = _world()
    if world == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, 0)


def text_keys(ids: torch.Tensor) -> torch.Tensor:
    """(B, T) token ids -> (B,) int64 keys, equal for identical rows (a polynomial hash mod 2**61 - 1)."""
    p, m = 1_000_003, (1 << 61) - 1
    key = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
    for t in range(ids.shape[1]):  # Horner's rule; every product stays below 2**63
        key = ((key * p) % m + ids[:, t].long() + 1) % m
    return key


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              negatives: torch.Tensor | None = None, keys: torch.Tensor | None = None,
              negative_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE, averaged over both directions: (CE(image->text) + CE(text->image)) / 2.

    features: (B, D) L2-normalised on this rank; logit_scale: the exp'd temperature. Across ranks the
    local rows are scored against the gathered global batch. `negatives` (N, D), if given, are extra
    text embeddings that enter only the image->text softmax (NegCLIP's hard negatives).

    `keys` (B,) / `negative_keys` (N,) (e.g. `text_keys(ids)`) drop false negatives: a text identical to
    a row's own caption is not scored against it (another image with the same caption, or another
    row's hard negative that is this row's caption), and an image whose caption is the row's caption
    is not a negative for that caption. Without them, a batch that holds a scene and its attribute-
    swapped neighbour asks the model to push each image away from its own caption."""
    rank, world = _world()
    all_img = gather_with_grad(image_features)
    all_txt = gather_with_grad(text_features)
    b = image_features.shape[0]
    labels = torch.arange(b, device=image_features.device) + rank * b
    texts = all_txt if negatives is None else torch.cat([all_txt, gather_with_grad(negatives)], 0)
    logits_i = logit_scale * image_features @ texts.T
    logits_t = logit_scale * text_features @ all_img.T
    if keys is not None:
        if negatives is not None and negative_keys is None:
            raise ValueError("clip_loss: keys were given for the captions but not for the negatives")
        all_keys = gather_no_grad(keys)
        cand = all_keys if negatives is None else torch.cat([all_keys, gather_no_grad(negative_keys)], 0)
        same = cand[None, :] == keys[:, None]  # (B, candidates); the captions come first, images share their order
        same[torch.arange(b, device=keys.device), labels] = False
        logits_i = logits_i.masked_fill(same, float("-inf"))
        logits_t = logits_t.masked_fill(same[:, : all_img.shape[0]], float("-inf"))
    return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent. z1, z2 (B, D): the two views' projections on this rank (normalised here). Each of
    the 2B views is scored against the 2N views of the global batch (N = B x ranks): its other view is
    the positive, the 2N - 2 other views the negatives, itself left out; the mean of the 2B
    cross-entropies (so the mean over ranks, which DDP's averaging takes, is the global mean)."""
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    rank, _ = _world()
    all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
    n, b = all1.shape[0], z1.shape[0]
    logits = torch.cat([z1, z2]) @ torch.cat([all1, all2]).T / temperature  # (2B, 2N)
    own = torch.arange(b, device=z1.device) + rank * b
    self_idx = torch.cat([own, own + n])
    logits = logits.masked_fill(F.one_hot(self_idx, 2 * n).bool(), float("-inf"))
    return F.cross_entropy(logits, torch.cat([own + n, own]))


def hard_negative_loss(image_features: torch.Tensor, text_features: torch.Tensor, negatives: torch.Tensor,
                       logit_scale: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's caption against its own hard negative alone: CE over the two logits, averaged over
    the rows that have a negative (`valid` (B,) bool; all rows if None). All inputs are this rank's rows
    (B, D), L2-normalised; nothing is gathered but the count of valid rows, so that with DDP averaging
    the gradient the loss is the mean over every rank's valid rows, as in one process.

    In NegCLIP's softmax the hard negative is one of 2B candidates and a batch of easy ones swamps it:
    on the world the text encoder stays on a bag-of-words plateau (caption and swap at cosine 0.998)
    for as long as we could train; this term isolates the one comparison that teaches binding."""
    logits = logit_scale * torch.stack([(image_features * text_features).sum(-1),
                                        (image_features * negatives).sum(-1)], 1)
    per_row = F.cross_entropy(
        logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device), reduction="none"
    )
    if valid is None:
        return per_row.mean()
    valid = valid.to(per_row.dtype)
    count = valid.sum().detach()
    _, world = _world()
    if world > 1:  # the mean over every rank's valid rows: DDP's gradient average then matches one process
        dist.all_reduce(count)
        count = count / world
    return (per_row * valid).sum() / count.clamp(min=1.0 / world)


def coca_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              logits: torch.Tensor, labels: torch.Tensor, pad_id: int, clip_weight: float = 1.0,
              caption_weight: float = 2.0) -> tuple[torch.Tensor, dict]:
    """CoCa: clip_weight * contrastive + caption_weight * captioning cross-entropy (padding ignored),
    as open_clip's CoCaLoss. logits (B, T, vocab) predict labels (B, T). Returns (total, parts)."""
    contrastive = clip_loss(image_features.float(), text_features.float(), logit_scale)
    caption = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=pad_id)
    total = clip_weight * contrastive + caption_weight * caption
    return total, {"contrastive_loss": contrastive.detach(), "caption_loss": caption.detach()}


def next_token_loss(hidden: torch.Tensor, labels: torch.Tensor, head,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the supervised positions (labels != IGNORE) and their number.
    hidden (B, T, dim) are the LM's final states, labels (B, T); `head` (dim -> vocab) runs only at the
    supervised positions: at short sequences the vocabulary projection is most of a step's cost.
    weights (B, T), the weight of each label: the loss is then sum(w * ce) / sum(w) (token weighting)."""
    target = labels[:, 1:]
    keep = target != IGNORE
    n = int(keep.sum())
    if n == 0:
        raise InvalidPrompt("no supervised token in this batch: every label is IGNORE")
    logits = head(hidden[:, :-1][keep]).float()
    if weights is None:
        return F.cross_entropy(logits, target[keep]), n
    w = weights[:, 1:][keep].float()
    return (F.cross_entropy(logits, target[keep], reduction="none") * w).sum() / w.sum().clamp_min(1e-12), n
