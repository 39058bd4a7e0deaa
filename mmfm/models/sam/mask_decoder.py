"""SAM's mask decoder: an IoU token and 4 mask tokens join the prompt tokens in the two-way
transformer; the image side is upscaled 4x by transposed convolutions, each mask token goes through
its own hypernetwork MLP to weights that dot the upscaled map into a mask, and the IoU token predicts
each mask's quality. multimask_output returns masks 1..3 (ambiguous prompts), otherwise mask 0.

Shapes: image (1 or B, D, h, w), image_pe (1, D, h, w), sparse (B, N, D), dense (B, D, h, w)
-> masks (B, 3 or 1, 4h, 4w) logits, iou (B, 3 or 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.models.sam.config import SAMConfig
from mmfm.models.sam.two_way_transformer import TwoWayTransformer
from mmfm.nn.blocks import LayerNorm2d


class StackMLP(nn.Module):
    """`depth` linear layers with ReLU between them (SAM's heads)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, depth: int):
        super().__init__()
        dims = [dim_in] + [hidden] * (depth - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    def __init__(self, c: SAMConfig):
        super().__init__()
        d = c.prompt_dim
        self.transformer = TwoWayTransformer(c.decoder_depth, d, c.decoder_heads, c.decoder_mlp_dim,
                                             c.attention_downsample_rate)
        self.num_mask_tokens = c.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, d)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(d, d // 4, kernel_size=2, stride=2), LayerNorm2d(d // 4), nn.GELU(),
            nn.ConvTranspose2d(d // 4, d // 8, kernel_size=2, stride=2), nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(StackMLP(d, d, d // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = StackMLP(d, c.iou_head_hidden, self.num_mask_tokens, c.iou_head_depth)

    def forward(self, image_embeddings, image_pe, sparse, dense, multimask_output: bool):
        masks, iou = self.predict_masks(image_embeddings, image_pe, sparse, dense)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou[:, sl]

    def predict_masks(self, image_embeddings, image_pe, sparse, dense):
        """All 4 masks and IoU predictions. image_embeddings with batch 1 is shared by every prompt."""
        b = sparse.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])[None].expand(b, -1, -1)
        tokens = torch.cat([out_tokens, sparse], 1)
        if image_embeddings.shape[0] != b:
            image_embeddings = image_embeddings.expand(b, -1, -1, -1)
        src = image_embeddings + dense
        pos = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_out, mask_out = hs[:, 0], hs[:, 1 : 1 + self.num_mask_tokens]
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(mask_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        _, c2, h2, w2 = up.shape
        masks = (hyper @ up.flatten(2)).view(b, -1, h2, w2)
        return masks, self.iou_prediction_head(iou_out)
