"""Molmo2's training sequences: message trees, packing, token weighting.

An example is its vision context (images or frames, with whatever text they share) and several
question-answer pairs about it. Run one by one, each pair would repeat the context; Molmo2 instead
lays the example out once as a tree: the context, then every pair as a branch that sees the context
and itself only. Several examples go into one sequence (packing) and never see each other. The mask,
for query q and key k of one packed row:

    same example  and  (k in the context or k in q's branch)  and  (k <= q, or both are vision tokens)

and positions restart for each branch where the context ends, so every branch is computed exactly as
if it followed the context alone: the packed loss is the sum of the pairs' losses (tests/test_molmo2.py).

Token weighting (the Molmo2 report, section 3): each answer's tokens carry the weight 0.1 for video
captions, 0.2 for pointing and 4 / sqrt(n) for an answer of n tokens otherwise, so that long outputs do
not drown short ones; the loss is sum(w * ce) / sum(w). `weighting=False` gives every token weight 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from mmfm.errors import InvalidPrompt
from mmfm.nn.attention import combine_masks
from mmfm.text.conversation import IGNORE

Kind = Literal["qa", "pointing", "caption"]


@dataclass
class QA:
    question: list[int]  # at least one token: the first answer token is predicted from the question's last
    answer: list[int]
    kind: Kind = "qa"


@dataclass
class Example:
    context: list[int]  # the vision tokens (and any text they share), in prompt order
    qas: list[QA]
    patches: torch.Tensor | None = None  # (N, P, p*p*3) of this example's images / frames
    pooling: torch.Tensor | None = None  # (T, K) into this example's own patches


def token_weight(n: int, kind: Kind) -> float:
    """The weight of each token of an answer of n tokens (Molmo2's token weighting)."""
    if kind == "caption":
        return 0.1
    if kind == "pointing":
        return 0.2
    return 4.0 / math.sqrt(max(n, 1))


@dataclass
class Batch:
    """What Molmo2.forward takes for training: input_ids, labels, loss_weights, position_ids (B, T), mask
    (B, 1, T, T), and the patches / pooling of every image of the batch, in order."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    loss_weights: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor
    patches: torch.Tensor | None = None
    pooling: torch.Tensor | None = None
    tokens: int = 0  # real (non-padding) tokens
    rows: list = field(default_factory=list)  # per row, the (example, qa) indices it holds

    def model_inputs(self) -> dict:
        return dict(input_ids=self.input_ids, patches=self.patches, pooling=self.pooling, labels=self.labels,
                    loss_weights=self.loss_weights, position_ids=self.position_ids, mask=self.mask)


def _vision_pixels(examples: list[Example]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    patches, pools, offset = [], [], 0
    for ex in examples:
        if ex.patches is None:
            continue
        pools.append(torch.where(ex.pooling >= 0, ex.pooling + offset, ex.pooling))
        patches.append(ex.patches)
        offset += ex.patches.shape[0] * ex.patches.shape[1]
    if not patches:
        return None, None
    k = max(p.shape[1] for p in pools)  # images and videos pool different windows: pad with empty (-1) slots
    pools = [torch.nn.functional.pad(p, (0, k - p.shape[1]), value=-1) for p in pools]
    return torch.cat(patches), torch.cat(pools)


def _layout(examples: list[Example], weighting: bool, one_branch: int | None = None):
    """One row's tokens: ids, labels, weights, positions, example id, branch id (0 = context)."""
    ids, labels, weights, pos, ex_id, branch = [], [], [], [], [], []
    for e, ex in enumerate(examples):
        c = len(ex.context)
        ids += ex.context
        labels += [IGNORE] * c
        weights += [0.0] * c
        pos += list(range(c))
        ex_id += [e] * c
        branch += [0] * c
        for i, qa in enumerate(ex.qas, 1):
            if one_branch is not None and i != one_branch:
                continue
            if not qa.question or not qa.answer:
                raise InvalidPrompt("every question-answer pair needs at least one question and one answer token")
            n = len(qa.question) + len(qa.answer)
            w = token_weight(len(qa.answer), qa.kind) if weighting else 1.0
            ids += qa.question + qa.answer
            labels += [IGNORE] * len(qa.question) + qa.answer
            weights += [0.0] * len(qa.question) + [w] * len(qa.answer)
            pos += list(range(c, c + n))
            ex_id += [e] * n
            branch += [i] * n
    return ids, labels, weights, pos, ex_id, branch


def tree_mask(ex_id: torch.Tensor, branch: torch.Tensor, is_vision: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, T) example ids, branch ids, vision flags, real-token flags -> (B, 1, T, T) bool (module docstring)."""
    t = ex_id.shape[1]
    idx = torch.arange(t)
    causal = idx[None, :, None] >= idx[None, None, :]
    both_vision = is_vision[:, :, None] & is_vision[:, None, :]
    same_ex = ex_id[:, :, None] == ex_id[:, None, :]
    visible_branch = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
    allowed = same_ex & visible_branch & (causal | both_vision) & real[:, None, :]
    return combine_masks(allowed[:, None])


def _collate(rows: list[tuple], vision_ids, pad_id: int) -> dict:
    t = max(len(r[0]) for r in rows)
    b = len(rows)
    out = {
        "input_ids": torch.full((b, t), pad_id, dtype=torch.long),
        "labels": torch.full((b, t), IGNORE, dtype=torch.long),
        "loss_weights": torch.zeros(b, t),
        "position_ids": torch.zeros(b, t, dtype=torch.long),
    }
    ex_id = torch.full((b, t), -1, dtype=torch.long)
    branch = torch.zeros(b, t, dtype=torch.long)
    real = torch.zeros(b, t, dtype=torch.bool)
    for r, (ids, labels, weights, pos, e, br) in enumerate(rows):
        n = len(ids)  # right padding: positions of the real tokens are unaffected
        out["input_ids"][r, :n] = torch.tensor(ids)
        out["labels"][r, :n] = torch.tensor(labels)
        out["loss_weights"][r, :n] = torch.tensor(weights)
        out["position_ids"][r, :n] = torch.tensor(pos)
        ex_id[r, :n] = torch.tensor(e)
        branch[r, :n] = torch.tensor(br)
        real[r, :n] = True
    is_vision = torch.isin(out["input_ids"], torch.tensor(list(vision_ids))) & real
    out["mask"] = tree_mask(ex_id, branch, is_vision, real)
    out["tokens"] = int(real.sum())
    return out


def pack(examples: list[Example], vision_ids, *, max_len: int, weighting: bool = True, pad_id: int = 0) -> Batch:
    """Examples -> rows of at most `max_len` tokens, each holding whole examples as message trees
    (first fit, in order). An example longer than max_len is an InvalidPrompt."""
    rows, groups, current, size = [], [], [], 0
    for i, ex in enumerate(examples):
        n = len(_layout([ex], weighting)[0])
        if n > max_len:
            raise InvalidPrompt(f"example {i} has {n} tokens as a message tree, over the {max_len} of a packed row")
        if current and size + n > max_len:
            groups.append(current)
            current, size = [], 0
        current.append(i)
        size += n
    if current:
        groups.append(current)
    ordered = []
    for g in groups:
        rows.append(_layout([examples[i] for i in g], weighting))
        ordered += [examples[i] for i in g]
    patches, pooling = _vision_pixels(ordered)
    return Batch(**_collate(rows, vision_ids, pad_id), patches=patches, pooling=pooling,
                 rows=[[(i, None) for i in g] for g in groups])


def unpacked(examples: list[Example], vision_ids, *, weighting: bool = True, pad_id: int = 0) -> Batch:
    """The padded baseline: one row per question-answer pair, each repeating its example's context."""
    rows, ordered, index = [], [], []
    for i, ex in enumerate(examples):
        for j in range(1, len(ex.qas) + 1):
            rows.append(_layout([ex], weighting, one_branch=j))
            ordered.append(ex)
            index.append([(i, j)])
    patches, pooling = _vision_pixels(ordered)
    return Batch(**_collate(rows, vision_ids, pad_id), patches=patches, pooling=pooling, rows=index)


__all__ = ["QA", "Example", "Batch", "pack", "unpacked", "token_weight", "tree_mask"]
