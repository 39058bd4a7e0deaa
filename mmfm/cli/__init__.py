"""The `mmfm` command."""


def load_model(path, cls, command: str, purpose: str | None = None, **kwargs):
    """mmfm.load(path), checked to be a `cls` (and to have a tokenizer when `purpose` says what needs
    one): a model of another kind is a CheckpointError that names both, never a traceback later on."""
    import mmfm
    from mmfm.errors import CheckpointError

    m = mmfm.load(path, **kwargs)
    if not isinstance(m, cls):
        raise CheckpointError(f"{path} holds a {type(m).__name__}; `mmfm {command}` needs a {cls.__name__}")
    if purpose is not None and m.tokenizer is None:
        raise CheckpointError(f"{path} has no tokenizer files; {purpose} need one")
    return m


def output_file(path):
    """An output file's folder, made if need be; an output that cannot be written is a ConfigError now,
    not an OSError after the work is done."""
    from pathlib import Path

    from mmfm.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e} ({path.parent})") from e
    import os

    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"cannot write {path}: {path.parent} is not writable")
    return path
