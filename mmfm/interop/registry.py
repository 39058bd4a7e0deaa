"""Every checkpoint format mmfm reads or writes, in two tables.

`load(path)` looks at a folder or file once (`Checkpoint`: its config files, and its tensors only if a
rule asks for them, read once) and takes the first row of LOADERS whose rule matches. `save(model,
folder, format)` finds the writer in SAVERS by the model's class and the format. A model class knows
only its own "mmfm" folder; the other formats live in this package, one module each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmfm.checkpoint import load_state_dict, read_json, resolve, write_manifest
from mmfm.errors import CheckpointError, ConfigError
from mmfm.interop import coca as oc_coca
from mmfm.interop import hf_clip, hf_llava, hf_molmo2, open_clip, sam
from mmfm.lm.model import LOWBIT, LanguageModel, as_dtype, lm_to_lowbit, load_lm
from mmfm.models.clip import CLIP, attach_tokenizer, load_mmfm_clip
from mmfm.models.coca import CoCa, load_mmfm_coca
from mmfm.models.flamingo import Flamingo, load_mmfm_flamingo
from mmfm.models.llava import Llava, load_mmfm_llava
from mmfm.models.molmo2 import Molmo2, load_mmfm_molmo2
from mmfm.models.sam.model import SAM, load_mmfm_sam
from mmfm.models.simclr import SimCLR, load_mmfm_simclr
from mmfm.nn.decoder import DecoderLM
from mmfm.nn.lowbit import Int4Linear, Int8Linear
from mmfm.weights import resolve as shipped

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
LM_MODEL_TYPES = ("llama", "mmfm-lm")


@dataclass
class Checkpoint:
    """What a rule may look at: the path, its config.json / open_clip_config.json (parsed once), the
    first bytes of a file, and its state dict (read on first use, then kept)."""

    path: Path
    config: dict | None = None
    open_clip_config: dict | None = None
    magic: bytes = b""
    _state: dict | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path) -> Checkpoint:
        if not path.exists():
            raise CheckpointError(f"{path}: no such file or folder")
        ck = cls(path)
        if path.is_dir():
            if (path / "config.json").is_file():
                ck.config = read_json(path / "config.json")
            if (path / "open_clip_config.json").is_file():
                ck.open_clip_config = read_json(path / "open_clip_config.json")
        else:
            with open(path, "rb") as f:
                ck.magic = f.read(4)
        return ck

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type") if isinstance(self.config, dict) else None

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self._state is None:
            self._state = load_state_dict(self.path)
        return self._state

    @property
    def read_state(self) -> dict[str, torch.Tensor] | None:
        """The state dict if a rule has read it already (a loader then need not read the file again)."""
        return self._state

    def is_state_file(self) -> bool:
        return self.path.is_file() and self.path.suffix in STATE_DICT_SUFFIXES

    def has_keys(self, *prefixes: str) -> bool:
        """A state-dict file holding keys under every one of `prefixes`."""
        return self.is_state_file() and all(any(k.startswith(p) for k in self.state_dict) for p in prefixes)


def _is_lm(ck: Checkpoint) -> bool:
    if ck.path.is_file():
        return ck.magic == b"GGUF" or ck.path.suffix == ".gguf"
    return ck.model_type in LM_MODEL_TYPES


def _is_open_clip_coca(ck: Checkpoint) -> bool:
    if ck.open_clip_config is None:
        return False
    return "multimodal_cfg" in ck.open_clip_config.get("model_cfg", ck.open_clip_config)


def _official_sam(ck: Checkpoint, kw: dict):
    path = ck.path / "sam.pth" if ck.path.is_dir() else ck.path
    sd = load_state_dict(path) if ck.path.is_dir() else ck.state_dict
    return sam.load_official(path, config=kw.get("config"), sd=sd)


def _with_tokenizer(model, path: Path):
    attach_tokenizer(model, path)
    return model.eval()


@dataclass(frozen=True)
class Loader:
    name: str
    matches: Callable[[Checkpoint], bool]
    load: Callable[[Checkpoint, dict], object]


# First match wins: specific signatures before the open_clip fallback for bare state-dict files.
LOADERS: tuple[Loader, ...] = (
    Loader("lm (GGUF, HF Llama, mmfm)", _is_lm, lambda ck, kw: load_lm(ck.path, dtype=kw.get("dtype", "float32"))),
    Loader("mmfm-flamingo", lambda ck: ck.model_type == "mmfm-flamingo",
           lambda ck, kw: load_mmfm_flamingo(ck.path, dtype=kw.get("dtype", "float32"))),
    Loader("mmfm-llava", lambda ck: ck.model_type == "mmfm-llava",
           lambda ck, kw: load_mmfm_llava(ck.path, dtype=kw.get("dtype", "float32"))),
    Loader("hf-llava", lambda ck: ck.model_type == "llava",
           lambda ck, kw: hf_llava.load_hf_llava(ck.path, dtype=as_dtype(kw.get("dtype", "float32")))),
    Loader("mmfm-molmo2", lambda ck: ck.model_type == "mmfm-molmo2",
           lambda ck, kw: load_mmfm_molmo2(ck.path, dtype=kw.get("dtype", "float32"))),
    Loader("hf-molmo2", lambda ck: ck.model_type == "molmo2",
           lambda ck, kw: hf_molmo2.load_hf_molmo2(ck.path, dtype=as_dtype(kw.get("dtype", "float32")))),
    Loader("mmfm-sam", lambda ck: ck.model_type == "mmfm-sam", lambda ck, kw: load_mmfm_sam(ck.path)),
    Loader("hf-sam", lambda ck: ck.model_type == "sam", lambda ck, kw: sam.load_hf_sam(ck.path)),
    Loader("official-sam",
           lambda ck: (ck.path.is_dir() and ck.config is None and (ck.path / "sam.pth").is_file())
           or ck.has_keys("image_encoder.", "mask_decoder."),
           _official_sam),
    Loader("mmfm-simclr", lambda ck: ck.model_type == "mmfm-simclr", lambda ck, kw: load_mmfm_simclr(ck.path)),
    Loader("mmfm-coca", lambda ck: ck.model_type == "mmfm-coca",
           lambda ck, kw: _with_tokenizer(load_mmfm_coca(ck.path), ck.path)),
    Loader("open_clip-coca", lambda ck: _is_open_clip_coca(ck) or ck.has_keys("text_decoder."),
           lambda ck, kw: _with_tokenizer(oc_coca.load_open_clip_coca(ck.path, config=kw.get("config"),
                                                                      sd=ck.read_state), ck.path)),
    Loader("mmfm-clip", lambda ck: ck.model_type == "mmfm-clip",
           lambda ck, kw: _with_tokenizer(load_mmfm_clip(ck.path, **kw), ck.path)),
    Loader("hf-clip", lambda ck: ck.model_type == "clip",
           lambda ck, kw: _with_tokenizer(hf_clip.load_hf(ck.path, **kw), ck.path)),
    Loader("open_clip", lambda ck: ck.config is None and (ck.open_clip_config is not None or ck.path.is_file()),
           lambda ck, kw: _with_tokenizer(open_clip.load_open_clip(ck.path, config=kw.pop("config", None),
                                                                   sd=ck.read_state, **kw), ck.path)),
)


def identify(path_or_id) -> str:
    """The name of the LOADERS row that would read this checkpoint; CheckpointError if none."""
    return _match(Checkpoint.open(resolve(path_or_id))).name


def _match(ck: Checkpoint) -> Loader:
    for row in LOADERS:
        if row.matches(ck):
            return row
    if ck.config is not None:
        raise CheckpointError(f"{ck.path}: config.json has model_type {ck.model_type!r}, which mmfm does not load")
    raise CheckpointError(f"{ck.path}: no config.json or open_clip_config.json; not a checkpoint folder mmfm knows")


def load(path_or_id, **kwargs):
    """Any checkpoint mmfm knows (CLIP: mmfm, HF transformers, open_clip; CoCa: mmfm, open_clip; SAM: mmfm,
    HF, official; LLaVA: mmfm, HF; Molmo2: mmfm, HF; Flamingo: mmfm; language models: GGUF, HF Llama, mmfm),
    detected from its files. kwargs: dtype (LLaVA, Molmo2, Flamingo, LM: float32, bfloat16, or int4 / int8 for the
    language model's block Linears), config (open_clip and official
    files), CLIP overrides. A shipped checkpoint's name (mmfm.weights.NAMES) loads that checkpoint."""
    ck = Checkpoint.open(resolve(shipped(path_or_id)))
    model = _match(ck).load(ck, dict(kwargs))
    if str(kwargs.get("dtype")) in LOWBIT and isinstance(getattr(model, "lm", None), DecoderLM) and not any(
            isinstance(m, (Int4Linear, Int8Linear)) for m in model.lm.modules()):  # a transformers folder: floats
        lm_to_lowbit(model.lm, str(kwargs["dtype"]))
    return model


def _save_mmfm(model, folder: Path) -> Path:
    return model.save_pretrained(folder)


# (model class, format) -> writer(model, folder). "mmfm" is each class's own save_pretrained.
SAVERS: dict[tuple[type, str], Callable] = {
    (CLIP, "mmfm"): _save_mmfm,
    (CLIP, "hf"): hf_clip.save_hf,
    (CLIP, "open_clip"): open_clip.save_open_clip,
    (CoCa, "mmfm"): _save_mmfm,
    (SimCLR, "mmfm"): _save_mmfm,
    (CoCa, "open_clip"): oc_coca.save_open_clip_coca,
    (SAM, "mmfm"): _save_mmfm,
    (SAM, "official"): sam.save_official,
    (SAM, "hf"): sam.to_hf_folder,
    (Llava, "mmfm"): _save_mmfm,
    (Llava, "hf"): hf_llava.save_hf_llava,
    (Flamingo, "mmfm"): _save_mmfm,
    (Molmo2, "mmfm"): _save_mmfm,
    (Molmo2, "hf"): hf_molmo2.save_hf_molmo2,
    (LanguageModel, "mmfm"): lambda m, f: m.save_pretrained(f, format="mmfm"),
    (LanguageModel, "hf"): lambda m, f: m.save_pretrained(f, format="hf"),
}


def formats(model) -> list[str]:
    return [fmt for (cls, fmt) in SAVERS if isinstance(model, cls)]


def save(model, folder, format: str = "mmfm") -> Path:  # noqa: A002 - the natural name
    """Write `model` to `folder` in `format` (see `formats(model)`); returns the folder."""
    writer = next((w for (cls, fmt), w in SAVERS.items() if isinstance(model, cls) and fmt == format), None)
    if writer is None:
        raise ConfigError(f"a {type(model).__name__} can be saved as {', '.join(formats(model)) or 'nothing'}, "
                          f"not {format!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer(model, folder)
    tok = getattr(model, "tokenizer", None)
    if format == "hf" and tok is not None and isinstance(model, (CLIP, Llava)):
        (tok.save if isinstance(model, CLIP) else tok.save_pretrained)(folder)
    write_manifest(folder)  # every file written is checked when it is read back
    return folder


__all__ = ["LOADERS", "SAVERS", "Checkpoint", "identify", "load", "save", "formats"]
