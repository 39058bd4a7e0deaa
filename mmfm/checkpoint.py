"""Safe checkpoint I/O shared by every model: safetensors or `torch.load(weights_only=True)` only,
folder-or-hub resolution, and strict state-dict loading that names what does not fit."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch

from mmfm.errors import CheckpointError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local folder/file, or a Hugging Face Hub repo id fetched with huggingface_hub (which fails
    offline with a clear error: there is no network here)."""
    p = Path(path_or_id)
    if p.exists():
        return p
    s = str(path_or_id)
    if s.count("/") == 1 and not s.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(s))
        except Exception as e:  # noqa: BLE001 - network, auth and missing repos all end here
            raise CheckpointError(
                f"{s}: not a local path, and the Hub download failed ({type(e).__name__}: {e})"
            ) from e
    raise CheckpointError(f"{s}: no such file or folder")


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch pickle loaded with weights_only=True (never
    arbitrary code). A training checkpoint's {"state_dict": ...} and DDP's "module." prefix are
    unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(f"{path}: unreadable or unsafe checkpoint ({type(e).__name__}: {e})") from e
    except Exception as e:  # noqa: BLE001 - the unpickler refuses code objects with its own types
        raise CheckpointError(f"{path}: refused to load ({type(e).__name__}: {e}); only tensors are accepted") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_folder_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a HF-style folder: model.safetensors, pytorch_model.bin (weights_only), or the
    shards listed by model.safetensors.index.json."""
    folder = Path(folder)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return load_state_dict(folder / name)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        sd = {}
        for shard in sorted(set(read_json(index).get("weight_map", {}).values())):
            sd.update(load_state_dict(folder / shard))
        return sd
    raise CheckpointError(f"{folder}: no model.safetensors, pytorch_model.bin or model.safetensors.index.json")


def save_safetensors(sd: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(path), metadata=metadata)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable config ({e})") from e


def load_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint",
                assign: bool = False) -> None:
    """load_state_dict(strict=True) with a CheckpointError that lists missing, unexpected and
    mis-shaped keys (at most a few of each), instead of a RuntimeError wall."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                parts.append(f"{name} ({len(items)}): " + ", ".join(items[:4]) + (" ..." if len(items) > 4 else ""))
        raise CheckpointError(f"{source} does not match the model config: " + "; ".join(parts))
    # assign=True adopts the given tensors (no second copy of the weights: a model built on the meta device)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True, assign=assign)
