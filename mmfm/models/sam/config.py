"""SAM configs and the registry of sizes: the published vit_b / vit_l / vit_h (1024 px, 16 px patches,
windows of 14 with four global blocks) and the small world sizes trained here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from mmfm.config import Config
from mmfm.errors import ConfigError

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass
class SAMConfig(Config):
    POSITIVE: ClassVar[tuple[str, ...]] = (
        "image_size", "patch_size", "encoder_dim", "encoder_depth", "encoder_heads", "mlp_ratio", "prompt_dim",
        "mask_in_chans", "decoder_depth", "decoder_heads", "decoder_mlp_dim", "attention_downsample_rate",
        "num_multimask_outputs", "iou_head_depth", "iou_head_hidden",
    )

    # image encoder (ViT with windowed + global attention, decomposed relative positions)
    image_size: int = 1024
    patch_size: int = 16
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    use_rel_pos: bool = True
    use_abs_pos: bool = True
    # prompt encoder and mask decoder
    prompt_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden: int = 256
    # pre/post-processing
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD
    mask_threshold: float = 0.0
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.encoder_dim % self.encoder_heads:
            raise ConfigError(f"encoder_dim {self.encoder_dim} is not divisible by encoder_heads {self.encoder_heads}")
        if (self.prompt_dim // self.attention_downsample_rate) % self.decoder_heads:
            raise ConfigError("prompt_dim / attention_downsample_rate must be divisible by decoder_heads")
        if self.prompt_dim % 8 or self.mask_in_chans % 4:
            raise ConfigError("prompt_dim must be a multiple of 8 and mask_in_chans of 4")
        if any(not 0 <= i < self.encoder_depth for i in self.global_attn_indexes):
            raise ConfigError(
                f"global_attn_indexes {self.global_attn_indexes} must be blocks 0..{self.encoder_depth - 1}"
            )

    def parameters(self) -> int:
        d = self.encoder_dim
        return self.encoder_depth * int((4 + 2 * self.mlp_ratio) * d * d) + 8 * self.decoder_mlp_dim * self.prompt_dim

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for the published models)."""
        return self.image_size // self.patch_size


SAM_CONFIGS = {
    "vit_b": dict(encoder_dim=768, encoder_depth=12, encoder_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(encoder_dim=1024, encoder_depth=24, encoder_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(encoder_dim=1280, encoder_depth=32, encoder_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    # The world's 64 px scenes: 4 px patches give a 16 x 16 embedding and 64 x 64 low-res masks, i.e.
    # masks at full resolution; windows of 8 with two global blocks keep the reference's structure.
    "world-tiny": dict(image_size=64, patch_size=4, encoder_dim=96, encoder_depth=4, encoder_heads=4,
                       window_size=8, global_attn_indexes=(1, 3), prompt_dim=64, decoder_heads=4,
                       decoder_mlp_dim=256, iou_head_hidden=64),
}


def sam_config(name: str, **overrides) -> SAMConfig:
    if name not in SAM_CONFIGS:
        raise ConfigError(f"unknown SAM size {name!r}; known: {', '.join(SAM_CONFIGS)}")
    return SAMConfig(**{**SAM_CONFIGS[name], **overrides})
