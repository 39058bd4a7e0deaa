"""Safe checkpoint I/O shared by every model: safetensors or `torch.load(weights_only=True)` only,
folder-or-hub resolution, strict state-dict loading that names what does not fit, and integrity.

Integrity: every folder mmfm writes gets a manifest (MANIFEST: each file's size and SHA-256), and every
read of a file listed there checks it first, so a file changed or damaged after it was written is a
CheckpointError naming it, never a silently different model. Weights are written atomically, and
non-finite weights are refused at load with the tensor's name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from pathlib import Path

import torch

from mmfm.errors import CheckpointError

MANIFEST = "mmfm-manifest.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local folder/file, or a Hugging Face Hub repo id fetched with huggingface_hub (which fails
    offline with a clear error: there is no network here)."""
    p = Path(path_or_id)
    if p.exists():
        return p
    s = str(path_or_id)
    if p.parent != Path(".") and p.parent.is_dir():  # a local folder exists: a mistyped name, not a Hub id
        raise CheckpointError(f"{s}: no such file or folder in {p.parent}")
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
    verify_file(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); it was not written completely")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(f"{path}: unreadable or unsafe checkpoint ({type(e).__name__}: {e})") from e
    except Exception as e:  # noqa: BLE001 - the unpickler refuses code objects with its own types
        msg = str(e).split("\n")[0].split(" Re-running `torch.load` with")[0]  # not torch's weights_only=False advice
        raise CheckpointError(f"{path}: refused to load ({type(e).__name__}: {msg}); mmfm loads only tensors, never "
                              "pickled code") from e
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
    """Written to a temporary file and moved into place: a kill never leaves half a weights file."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    """A JSON object (a config); anything else, or a file changed since its manifest, is a CheckpointError."""
    path = Path(path)
    verify_file(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable config ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: a config must be a JSON object, got {type(obj).__name__}")
    return obj


def save_model_folder(folder, config: dict, sd: dict[str, torch.Tensor], fmt: str = "pt", tokenizer=None) -> Path:
    """mmfm's folder for a model: config.json, model.safetensors, the tokenizer's files (its `save`), then
    the manifest over all of them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_safetensors(sd, folder / "model.safetensors", metadata={"format": fmt})
    if tokenizer is not None:
        tokenizer.save(folder)
    write_manifest(folder)
    return folder


# ------------------------------------------------------------------------------------------ integrity
def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a model's weights (names, shapes and two moments of every tensor): the same model
    loaded from any of its formats gives the same fingerprint, another model almost surely not. What a
    photo index or a cached SAM image embedding records, so that a different model's vectors are refused."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().double()
        h.update(f"{name}{tuple(t.shape)}{t.sum().item():.6e}{t.square().sum().item():.6e}".encode())
    return h.hexdigest()[:16]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | os.PathLike) -> Path:
    """MANIFEST in `folder`: the size and SHA-256 of every file directly in it (written last, atomically)."""
    folder = Path(folder)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp")}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"format": 1, "files": files}, indent=1))
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


_VERIFIED: dict[tuple, bool] = {}


def verify_file(path: Path) -> None:
    """If `path`'s folder has a manifest that lists it, its size and SHA-256 must match (each file is
    checked once per process while unchanged)."""
    path = Path(path)
    manifest = path.parent / MANIFEST
    if path.name == MANIFEST or not manifest.is_file():
        return
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    try:
        entry = json.loads(manifest.read_text())["files"].get(path.name)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{manifest}: the manifest is damaged ({type(e).__name__}); the folder cannot be "
                              "checked") from e
    if entry is None:
        return
    if st.st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
        raise CheckpointError(f"{path}: its content does not match {MANIFEST} (written {entry.get('bytes')} bytes, "
                              f"now {st.st_size}): the file was changed or damaged after it was saved (if you "
                              f"edited it on purpose, delete {MANIFEST})")
    _VERIFIED[key] = True


def check_finite(sd: dict[str, torch.Tensor], source: str) -> None:
    """NaN or inf in a weight makes every output NaN (a classifier printing nan%): refuse it by name."""
    for k, v in sd.items():
        if not v.is_floating_point():
            continue
        flat = v.reshape(-1)
        for i in range(0, flat.numel(), 1 << 20):  # in pieces: isfinite's scratch is a few times its input
            if not bool(torch.isfinite(flat[i : i + (1 << 20)]).all()):
                raise CheckpointError(f"{source}: tensor {k!r} holds NaN or inf values; the weights are damaged")


@contextlib.contextmanager
def skeleton():
    """Modules built inside get meta tensors and skip their initialisation, for a loader that then assigns
    the real weights (load_strict(..., assign=True)). Skipping matters beyond the wasted work: the first
    random init on a meta tensor imports PyTorch's Python meta kernels (sympy, dynamo, ...: ~150 MB of
    memory for good), which a model that only runs eagerly never needs. (torch.nn.init is patched for the
    duration, process-wide, as transformers' no_init_weights does: build models in one thread at a time.)"""
    init = torch.nn.init
    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}
    try:
        for n in names:
            setattr(init, n, _no_init)
        with torch.device("meta"):
            yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


def _no_init(tensor, *args, **kwargs):
    return tensor


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
    check_finite(sd, source)
    if missing or unexpected or shapes:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                parts.append(f"{name} ({len(items)}): " + ", ".join(items[:4]) + (" ..." if len(items) > 4 else ""))
        raise CheckpointError(f"{source} does not match the model config: " + "; ".join(parts))
    # assign=True adopts the given tensors (no second copy of the weights: a model built on the meta device)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True, assign=assign)
