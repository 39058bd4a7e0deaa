"""Segment Anything: model, predictor, automatic masks, text prompts (see model.py)."""

from mmfm.models.sam.amg import SamAutomaticMaskGenerator
from mmfm.models.sam.config import SAM_CONFIGS, SAMConfig, sam_config
from mmfm.models.sam.model import SAM, load_mmfm_sam
from mmfm.models.sam.predictor import SamPredictor

__all__ = [
    "SAM",
    "SAMConfig",
    "SAM_CONFIGS",
    "sam_config",
    "SamPredictor",
    "SamAutomaticMaskGenerator",
    "load_mmfm_sam",
]
