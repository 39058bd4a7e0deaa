"""Segment Anything (Kirillov et al., 2023): image encoder + prompt encoder + mask decoder, with the
reference's pre- and post-processing. The image is encoded once; each prompt costs one decoder pass.

    model = SAM(sam_config("world-tiny"))
    emb = model.encode_image(model.preprocess(pixels))         # (B, D, h, w)
    low_res, iou = model.decode(emb, points=(xy, labels), multimask_output=True)
    masks = model.postprocess_masks(low_res, input_size, original_size) > model.mask_threshold
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.checkpoint import load_state_dict, load_strict, read_json, save_model_folder
from mmfm.errors import CheckpointError
from mmfm.models.sam.config import SAMConfig, sam_config
from mmfm.models.sam.image_encoder import ImageEncoderViT
from mmfm.models.sam.mask_decoder import MaskDecoder
from mmfm.models.sam.prompt_encoder import PromptEncoder


class SAM(nn.Module):
    def __init__(self, config: SAMConfig | str = "world-tiny"):
        super().__init__()
        self.config = c = sam_config(config) if isinstance(config, str) else config
        self.image_encoder = ImageEncoderViT(c)
        self.prompt_encoder = PromptEncoder(c)
        self.mask_decoder = MaskDecoder(c)
        self.register_buffer("pixel_mean", torch.tensor(c.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.pixel_std).view(-1, 1, 1), persistent=False)
        self.mask_threshold = c.mask_threshold

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) resized pixels in 0..255 -> normalised and padded bottom-right to (S, S)."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(pixels)

    def decode(self, image_embeddings: torch.Tensor, points=None, boxes=None, mask_input=None,
               multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the resized (model-input) frame -> low-res mask logits (B, C, 4h, 4w), IoU (B, C)."""
        sparse, dense = self.prompt_encoder(points, boxes, mask_input)
        return self.mask_decoder(image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, int],
                          original_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits -> logits at the original image size (upscale to S, crop the padding, resize),
        as the reference does."""
        masks = F.interpolate(masks, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------------------ files
    def save_pretrained(self, folder: str | Path) -> Path:
        """mmfm's folder: config.json + model.safetensors. The official file and transformers' SamModel
        folder: `mmfm.save(model, folder, format="official" | "hf")`."""
        return save_model_folder(folder, {"model_type": "mmfm-sam", "sam": self.config.to_dict()}, self.state_dict(),
                                 "mmfm-sam")


def load_mmfm_sam(folder: Path) -> SAM:
    cfg = read_json(folder / "config.json")
    if cfg.get("model_type") != "mmfm-sam":
        raise CheckpointError(f"{folder}: not an mmfm SAM folder")
    model = SAM(SAMConfig.from_dict(cfg["sam"]))
    load_strict(model, load_state_dict(folder / "model.safetensors"), str(folder))
    return model.eval()


__all__ = ["SAM", "load_mmfm_sam"]
