"""Typed exceptions: every bad input raises one of these, with a message that says what was
wrong and what to do about it. They all derive from `MMFMError`, so a caller can catch one type."""


class MMFMError(Exception):
    """Base class of every error mmfm raises on purpose."""


class InvalidImage(MMFMError, ValueError):
    """An image could not be read or is not usable (corrupt, truncated, too large, wrong shape)."""


class InvalidText(MMFMError, ValueError):
    """A text input is empty, too long or otherwise unusable."""


class InvalidPrompt(MMFMError, ValueError):
    """A prompt (points, boxes, masks, chat messages, labels) is malformed."""


class CheckpointError(MMFMError, ValueError):
    """A checkpoint is missing, corrupt, unsafe, or does not match its config."""


class ConfigError(MMFMError, ValueError):
    """A configuration value is invalid or inconsistent."""


class DataError(MMFMError, ValueError):
    """A dataset cannot be used: unknown format, missing columns, or more unusable records than tolerated."""


class IndexFileError(MMFMError, ValueError):
    """A photo index is missing, corrupt, or cannot answer a query (another model's vectors, an empty index)."""


class ProgramError(MMFMError, ValueError):
    """A generated program does not parse, does not validate, or failed while running."""


class TrainingError(MMFMError, RuntimeError):
    """Training cannot go on (a non-finite loss, a checkpoint from another run)."""


class ExportError(MMFMError, RuntimeError):
    """An exported graph does not reproduce the model (its runtime's outputs differ beyond tolerance)."""


class DependencyError(MMFMError, ImportError):
    """An optional dependency needed for this feature is not installed."""


class LLMError(MMFMError, RuntimeError):
    """A language-model service answered with an error, or an unusable answer."""


class LLMTimeout(LLMError, TimeoutError):
    """A language-model service did not answer in time (after the retries)."""


__all__ = [
    "MMFMError",
    "InvalidImage",
    "InvalidText",
    "InvalidPrompt",
    "CheckpointError",
    "IndexFileError",
    "ConfigError",
    "DataError",
    "ProgramError",
    "TrainingError",
    "ExportError",
    "DependencyError",
    "LLMError",
    "LLMTimeout",
]
