"""Small world-trained checkpoints shipped inside the package (see each folder's README.md)."""

from __future__ import annotations

from pathlib import Path

from mmfm.errors import CheckpointError

ROOT = Path(__file__).parent
NAMES = ("clip-world-tiny", "llava-world-tiny", "sam-world-tiny", "sam-world-tiny-parts", "visprog-writer-world")


def path(name: str) -> Path:
    """The folder of a shipped checkpoint, e.g. path("clip-world-tiny")."""
    if name not in NAMES:
        raise CheckpointError(f"no shipped checkpoint {name!r}; shipped: {', '.join(NAMES)}")
    return ROOT / name


__all__ = ["path", "NAMES"]
