"""SAM configs and the registry of sizes: the published vit_b / vit_l / vit_h (1024 px, 16 px patches,
windows of 14 with four global blocks) and the small world sizes trained here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from mmfm.errors import ConfigError

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass
class SAMConfig:
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

    def __post_init__(self):
        self.global_attn_indexes = tuple(int(i) for i in self.global_attn_indexes)
        self.pixel_mean, self.pixel_std = tuple(self.pixel_mean), tuple(self.pixel_std)
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.encoder_dim % self.encoder_heads:
            raise ConfigError(f"encoder_dim {self.encoder_dim} is not divisible by encoder_heads {self.encoder_heads}")
        if (self.prompt_dim // self.attention_downsample_rate) % self.decoder_heads:
            raise ConfigError("prompt_dim / attention_downsample_rate must be divisible by decoder_heads")
        if self.prompt_dim % 8 or self.mask_in_chans % 4:
            raise ConfigError("prompt_dim must be a multiple of 8 and mask_in_chans of 4")

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for the published models)."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SAMConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown SAMConfig keys {unknown}")
        return cls(**d)


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
