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


def load(path_or_id, **kwargs):
    """Load a checkpoint folder or file in any format mmfm knows (mmfm, HF transformers, open_clip,
    segment-anything, GGUF): the table is `mmfm.interop.registry.LOADERS`."""
    from mmfm.interop.registry import load as _load

    return _load(path_or_id, **kwargs)


def save(model, folder, format: str = "mmfm"):  # noqa: A002 - the natural name
    """Write a model in one of its formats ("mmfm", "hf", "open_clip", "official"; see
    `mmfm.interop.registry.SAVERS`); returns the folder."""
    from mmfm.interop.registry import save as _save

    return _save(model, folder, format=format)


def __getattr__(name):  # the model classes, imported on first use so `import mmfm` stays light
    if name in ("CLIP", "CLIPConfig"):
        from mmfm.models import clip

        return getattr(clip, name)
    if name in ("Llava", "LlavaConfig"):
        from mmfm.models import llava

        return getattr(llava, name)
    if name in ("Flamingo", "FlamingoConfig"):
        from mmfm.models import flamingo

        return getattr(flamingo, name)
    raise AttributeError(f"module 'mmfm' has no attribute {name!r}")
