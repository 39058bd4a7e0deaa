"""Which format is this checkpoint? One place that looks at a folder or file and calls the right loader."""

from __future__ import annotations

from pathlib import Path

from mmfm.checkpoint import read_json
from mmfm.errors import CheckpointError


def detect(path: Path) -> str:
    """'mmfm-clip', 'hf-clip', 'open_clip', or raise CheckpointError saying what was found."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            cfg = read_json(path / "config.json")
            mt = cfg.get("model_type")
            if mt == "mmfm-clip":
                return "mmfm-clip"
            if mt == "clip":
                return "hf-clip"
            raise CheckpointError(f"{path}: config.json has model_type {mt!r}, which mmfm does not load yet")
        if (path / "open_clip_config.json").is_file():
            return "open_clip"
        raise CheckpointError(f"{path}: no config.json or open_clip_config.json; not a checkpoint folder mmfm knows")
    if path.is_file():
        return "open_clip"  # a bare state-dict file: open_clip's layout, with a config passed beside it
    raise CheckpointError(f"{path}: no such file or folder")


def load_clip(path: Path, **overrides):
    from mmfm.interop.hf_clip import load_hf
    from mmfm.interop.open_clip import load_open_clip
    from mmfm.models.clip import load_mmfm_clip

    kind = detect(path)
    if kind == "mmfm-clip":
        model = load_mmfm_clip(path, **overrides)
    elif kind == "hf-clip":
        model = load_hf(path, **overrides)
    else:
        config = overrides.pop("config", None)
        model = load_open_clip(path, config=config, **overrides)
    model.tokenizer = _tokenizer_for(path, model)
    return model.eval()


def _tokenizer_for(path: Path, model):
    from mmfm.text.tokenizer import CLIPTokenizer

    t = model.config.text
    tok = None
    if path.is_dir() and ((path / "vocab.json").is_file() or (path / "tokenizer.json").is_file()):
        tok = CLIPTokenizer.from_pretrained(path, context_length=t.context_length, pad_id=t.pad_token_id)
    elif model.config.tokenizer == "world":
        tok = CLIPTokenizer.world(context_length=t.context_length)
    if tok is not None:
        if tok.eot_token_id != t.eot_token_id or tok.sot_token_id != t.sot_token_id:
            raise CheckpointError(
                f"{path}: the tokenizer's start/end ids ({tok.sot_token_id}, {tok.eot_token_id}) differ from the "
                f"model config's ({t.sot_token_id}, {t.eot_token_id}); the text tower would pool the wrong token"
            )
        if tok.vocab_size > t.vocab_size:
            raise CheckpointError(f"{path}: tokenizer has {tok.vocab_size} tokens, the model only {t.vocab_size}")
    return tok


LM_MODEL_TYPES = ("llama", "mmfm-lm")


def is_language_model(path: Path) -> bool:
    """A GGUF file, or a folder whose config.json names a decoder LM mmfm loads."""
    if path.is_file():
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF" or path.suffix == ".gguf"
    cfg = path / "config.json"
    return cfg.is_file() and read_json(cfg).get("model_type") in LM_MODEL_TYPES


def load(path_or_id, **kwargs):
    """Load any checkpoint mmfm knows (CLIP: mmfm, HF transformers, open_clip; CoCa: mmfm, open_clip;
    SAM: mmfm, HF, official; language models: GGUF, HF Llama, mmfm), detected from its files."""
    from mmfm.checkpoint import resolve

    path = resolve(path_or_id)
    if is_language_model(path):
        from mmfm.lm import load_lm

        return load_lm(path, **kwargs)
    llava = _load_llava(path, **kwargs)
    if llava is not None:
        return llava
    sam = _load_sam(path, **kwargs)
    if sam is not None:
        return sam
    coca = _load_coca(path, **kwargs)
    if coca is not None:
        return coca
    return load_clip(path, **kwargs)


def _load_llava(path: Path, dtype="float32", **_):
    """An mmfm LLaVA or Flamingo folder or a transformers LlavaForConditionalGeneration folder, else None."""
    if not (path.is_dir() and (path / "config.json").is_file()):
        return None
    mt = read_json(path / "config.json").get("model_type")
    if mt == "mmfm-flamingo":
        from mmfm.models.flamingo import load_mmfm_flamingo

        return load_mmfm_flamingo(path, dtype=dtype)
    if mt == "mmfm-llava":
        from mmfm.models.llava import load_mmfm_llava

        return load_mmfm_llava(path, dtype=dtype)
    if mt == "llava":
        from mmfm.interop.hf_llava import load_hf_llava
        from mmfm.lm.model import as_dtype

        return load_hf_llava(path, dtype=as_dtype(dtype))
    return None


def _load_coca(path: Path, config=None, **_):
    """A CoCa checkpoint (mmfm folder, open_clip coca_* folder, or an open_clip state-dict file with
    `config`), else None."""
    from mmfm.checkpoint import load_state_dict

    if path.is_dir():
        if (path / "config.json").is_file() and read_json(path / "config.json").get("model_type") == "mmfm-coca":
            from mmfm.models.coca import load_mmfm_coca

            model = load_mmfm_coca(path)
        elif (path / "open_clip_config.json").is_file():
            full = read_json(path / "open_clip_config.json")
            if "multimodal_cfg" not in full.get("model_cfg", full):
                return None
            from mmfm.interop.coca import load_open_clip_coca

            model = load_open_clip_coca(path)
        else:
            return None
    elif path.is_file() and path.suffix in (".pth", ".pt", ".bin", ".safetensors"):
        if not any(k.startswith("text_decoder.") for k in load_state_dict(path)):
            return None
        from mmfm.interop.coca import load_open_clip_coca

        model = load_open_clip_coca(path, config=config)
    else:
        return None
    model.tokenizer = _tokenizer_for(path, model)
    return model.eval()


def _load_sam(path: Path, **kwargs):
    """A SAM checkpoint (mmfm folder, HF SamModel folder, official state-dict file), else None."""
    from mmfm.checkpoint import load_state_dict

    if path.is_dir():
        mt = read_json(path / "config.json").get("model_type") if (path / "config.json").is_file() else None
        if mt == "mmfm-sam":
            from mmfm.models.sam.model import load_mmfm_sam

            return load_mmfm_sam(path)
        if mt == "sam":
            from mmfm.interop.sam import load_hf_sam

            return load_hf_sam(path)
        if (path / "sam.pth").is_file():
            path = path / "sam.pth"
        else:
            return None
    if path.is_file() and path.suffix in (".pth", ".pt", ".bin", ".safetensors"):
        sd = load_state_dict(path)
        if any(k.startswith("image_encoder.") for k in sd) and any(k.startswith("mask_decoder.") for k in sd):
            from mmfm.interop.sam import load_official

            return load_official(path, config=kwargs.get("config"), sd=sd)
    return None
