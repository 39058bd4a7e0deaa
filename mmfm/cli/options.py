"""Options every `mmfm train ...` command shares, defined once (the same flag, default and help text
everywhere; None means "the preset's value"), and `bounded`: a numeric option checked before any work,
a value out of range being one line and exit code 2 like every other mmfm error."""

import math

import typer

from mmfm.errors import ConfigError


def bounded(default, *flags, lo: float = 1, hi: float | None = None, help: str | None = None):  # noqa: A002
    """A numeric option that must lie in [lo, hi] (None stays None: the preset's value)."""

    def check(param: typer.CallbackParam, value):
        if value is None:
            return value
        ok = not (isinstance(value, float) and not math.isfinite(value)) and lo <= value and (hi is None or value <= hi)
        if not ok:
            flag = "--" + param.name.replace("_", "-")
            raise ConfigError(f"{flag} must be in {lo}..{hi if hi is not None else 'any'}, got {value}")
        return value

    return typer.Option(default, *flags, help=help, callback=check)


STEPS = bounded(None, lo=1, hi=10**7, help="Optimizer steps (default: the preset's).")
BATCH_SIZE = bounded(None, "--batch-size", lo=1, hi=65536, help="Global batch size.")
LR = bounded(None, lo=1e-12, hi=10.0, help="Peak learning rate.")
SEED = typer.Option(None, help="Seed of the data and the initialisation.")
RESUME = typer.Option(False, "--resume", help="Continue from out/checkpoint.pt.")
SAVE_EVERY = bounded(None, "--save-every", lo=1, hi=10**7, help="Checkpoint every N steps.")
BF16 = typer.Option(None, "--bf16/--fp32", help="bf16 autocast (default on).")
EVALUATE = typer.Option(True, "--eval/--no-eval", help="Evaluate after training.")
LOG_EVERY = bounded(None, "--log-every", lo=1, hi=10**7, help="Log metrics every N steps.")
SCENES = bounded(None, lo=1, hi=10**7, help="Training scenes in the cache (default: the preset's).")
