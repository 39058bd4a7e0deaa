"""The `mmfm` command."""


def load_model(path, cls, what: str, purpose: str, **kwargs):
    """mmfm.load(path), checked to be a `cls` with a tokenizer; CheckpointError (one line) otherwise."""
    import mmfm
    from mmfm.errors import CheckpointError

    m = mmfm.load(path, **kwargs)
    if not isinstance(m, cls):
        raise CheckpointError(f"{path} holds a {type(m).__name__}, not {what}")
    if m.tokenizer is None:
        raise CheckpointError(f"{path} has no tokenizer files; {purpose} need one")
    return m
