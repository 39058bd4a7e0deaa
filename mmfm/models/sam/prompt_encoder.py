"""SAM's prompt encoder. Sparse prompts (points, box corners) become tokens: a random-Fourier
encoding of the position plus a learned embedding of what the point is; dense prompts (a previous
low-res mask) are downscaled by convolutions to the embedding grid, or replaced by `no_mask_embed`.

Point labels: 1 foreground, 0 background, -1 padding (the not-a-point embedding, position zeroed);
2 / 3 a box's corners given as points (segment-anything's ONNX decoder takes boxes that way).
A padding point is appended only when there is no box (the reference's rule, which the released
decoders were trained with). Shapes: points (B, N, 2) + labels (B, N), boxes (B, 4) XYXY, masks
(B, 1, 4h, 4w) -> sparse (B, N', D), dense (B, D, h, w).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmfm.models.sam.config import SAMConfig
from mmfm.nn.blocks import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of (x, y) in [0, 1] with a fixed Gaussian matrix (Tancik et al.)."""

    def __init__(self, num_pos_feats: int, scale: float = 1.0):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([coords.sin(), coords.cos()], -1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """The dense encoding of an h x w grid at cell centres -> (D, h, w)."""
        h, w = size
        dev = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], -1)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Pixel coordinates (B, N, 2) in an image of `image_size` (h, w) -> (B, N, D)."""
        scale = torch.tensor([1.0 / image_size[1], 1.0 / image_size[0]], device=coords.device)
        return self._encode(coords.float() * scale)


class PromptEncoder(nn.Module):
    def __init__(self, c: SAMConfig):
        super().__init__()
        d = self.embed_dim = c.prompt_dim
        self.input_image_size = (c.image_size, c.image_size)
        self.image_embedding_size = (c.embedding_size, c.embedding_size)
        self.mask_input_size = (4 * c.embedding_size, 4 * c.embedding_size)
        self.pe_layer = PositionEmbeddingRandom(d // 2)
        # 0: background point, 1: foreground point, 2: box top-left, 3: box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, d) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, d)
        m = c.mask_in_chans
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, m // 4, kernel_size=2, stride=2), LayerNorm2d(m // 4), nn.GELU(),
            nn.Conv2d(m // 4, m, kernel_size=2, stride=2), LayerNorm2d(m), nn.GELU(),
            nn.Conv2d(m, d, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, d)

    def get_dense_pe(self) -> torch.Tensor:
        """(1, D, h, w): the position encoding of the image embedding grid."""
        return self.pe_layer(self.image_embedding_size)[None]

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], 1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], 1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        emb = torch.where(labels == -1, self.not_a_point_embed.weight, emb)
        for i, table in enumerate(self.point_embeddings):  # 0 / 1 points; 2 / 3 box corners given as points
            emb = emb + torch.where(labels == i, table.weight, 0.0)
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        return emb + torch.stack([self.point_embeddings[2].weight[0], self.point_embeddings[3].weight[0]])

    def forward(self, points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None,
                masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        bs = points[0].shape[0] if points is not None else boxes.shape[0] if boxes is not None else \
            masks.shape[0] if masks is not None else 1
        dev = self.no_mask_embed.weight.device
        sparse = [torch.empty(bs, 0, self.embed_dim, device=dev)]
        if points is not None:
            sparse.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        sparse = torch.cat(sparse, 1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense
