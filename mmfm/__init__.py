"""mmfm: multimodal foundation models from the model code up, trainable on an embedded world of shapes."""

__version__ = "0.1.0"

from mmfm import errors  # noqa: E402,F401
from mmfm.errors import (  # noqa: E402,F401
    CheckpointError,
    ConfigError,
    InvalidImage,
    InvalidPrompt,
    InvalidText,
    MMFMError,
    ProgramError,
)
