"""Small world-trained checkpoints shipped inside the package (see each folder's README.md)."""

from __future__ import annotations

from pathlib import Path

from mmfm.errors import CheckpointError

ROOT = Path(__file__).parent
NAMES = ("clip-world-tiny", "llava-world-tiny", "molmo-world-tiny", "molmo2-world-video", "sam-world-tiny",
         "sam-world-tiny-parts", "simclr-world-tiny", "visprog-writer-world")


def path(name: str) -> Path:
    """The folder of a shipped checkpoint, e.g. path("clip-world-tiny")."""
    if name not in NAMES:
        raise CheckpointError(f"no shipped checkpoint {name!r}; shipped: {', '.join(NAMES)}")
    return ROOT / name


def resolve(name_or_path):
    """A shipped checkpoint's name -> its folder; anything else (a path, a Hub id) as given. A local file or
    folder of that name wins, as a local folder wins over a Hub id in transformers."""
    s = str(name_or_path)
    return path(s) if s in NAMES and not Path(s).exists() else name_or_path


__all__ = ["path", "resolve", "NAMES"]
