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
def _precision(value: str | None) -> str | None:
    if value is not None and value not in ("auto", "fp32", "bf16", "bf16-default", "bf16-math"):
        raise typer.BadParameter(f"{value!r}: use auto, fp32 or bf16 (or bf16-default / bf16-math: the "
                                 f"attention kernel pinned)")
    return value


PRECISION = typer.Option(
    None, "--precision", callback=_precision, metavar="auto|fp32|bf16",
    help="auto (default): time the first batch in fp32 and in bf16 autocast on this host and train in the "
         "faster (cached per host); or fp32 / bf16.")
BF16 = typer.Option(None, "--bf16/--fp32", hidden=True, help="Older spelling of --precision bf16 / fp32.")
INFER_PRECISION = typer.Option(
    "fp32", "--precision", callback=_precision, metavar="fp32|auto|bf16",
    help="fp32 (default: the same scores on every host); auto: time a batch of images in fp32, bf16 autocast "
         "and bf16 with the math attention kernel on this host and encode in the fastest (cached); bf16.")


def inference_precision(choice: str | None, model):
    """Make `model` encode in the asked precision (fp32 by default; auto: measured on its encode_image with
    64 images of its size, printed on stderr) and return that Precision. Only the encoders run in it:
    their outputs come back in fp32, so scores, probes and indexes are computed in fp32 as before."""
    import torch

    from mmfm.precision import PRECISIONS, choose_inference, module_signature

    if choice in (None, "fp32"):
        return PRECISIONS["fp32"]
    size = model.config.vision.image_size
    c = choose_inference(choice, model.encode_image, torch.randn(64, 3, size, size), module_signature(model))
    typer.echo(c.describe(per="64 images"), err=True)
    p = c.precision
    if p.name != "fp32":
        for name in ("encode_image", "encode_text"):
            fn = getattr(model, name, None)
            if fn is not None:  # this loaded copy only: an instance attribute over the method
                def encode(*args, _fn=fn, **kwargs):
                    with p.context():
                        return _fn(*args, **kwargs).float()
                object.__setattr__(model, name, encode)
    return p


COMPILE = typer.Option(False, "--compile", help="torch.compile the training step: the first step compiles "
                       "(about a minute on 2 cores), later ones run faster where the host allows (eager if "
                       "compiling fails); worth it for long runs (bench/compile_speed.py).")


COMPILE_LM = typer.Option(False, "--compile", help="Compile the language model's decoding (pays most with --dtype "
                          "int4): one-answer steps ahead of time (AOTInductor), prompts and batches with "
                          "torch.compile; compiled and warmed at start, which takes minutes on 2 cores; eager if "
                          "compiling fails (bench/RESULTS.md).")


def compile_lm(lm) -> None:
    """--compile of the serving commands: compile and warm the LM before the server listens."""
    from mmfm.lm.decoding import compile_decoding

    typer.echo("compiling the language model's decoding (minutes the first time on this host)...", err=True)
    typer.echo(f"compiled and warmed in {compile_decoding(lm):.0f} s", err=True)


def precision_of(precision: str | None, bf16: bool | None) -> str | None:
    """--precision, else the older --bf16/--fp32, else None (the recipe's own: auto)."""
    if precision is not None:
        return precision
    return None if bf16 is None else ("bf16" if bf16 else "fp32")
EVALUATE = typer.Option(True, "--eval/--no-eval", help="Evaluate after training.")
LOG_EVERY = bounded(None, "--log-every", lo=1, hi=10**7, help="Log metrics every N steps.")
SCENES = bounded(None, lo=1, hi=10**7, help="Training scenes in the cache (default: the preset's).")

# A user's own data (mmfm.data): every trainer takes these; --data switches from the world to the files.
DATA = typer.Option(None, "--data", help="Your dataset: a CSV/TSV, webdataset shards ('{000..009}.tar'), an "
                    "image folder, LLaVA JSON or COCO JSON (format detected; see --format).")
FORMAT = typer.Option(None, "--format", help="csv | webdataset | imagefolder | llava | coco-instances | coco-captions "
                      "(default: detected).")
IMAGES = typer.Option(None, "--images", help="Folder the data's relative image paths start from "
                      "(default: the data file's folder).")
VAL_DATA = typer.Option(None, "--val-data", help="Held-out data, evaluated before and after training.")
VAL_IMAGES = typer.Option(None, "--val-images", help="Image folder of --val-data (default: its file's folder).")
EPOCHS = bounded(None, lo=1e-3, hi=1e5, help="Passes over --data (default 1; --steps wins).")
WARMUP = bounded(None, lo=0, hi=10**7, help="Warmup steps (default: 10% of the steps, at most 100).")
ACCUM = bounded(None, "--accum", lo=1, hi=4096, help="Gradient accumulation steps per optimizer step.")
MAX_BAD = bounded(0.1, "--max-bad", lo=0.0, hi=1.0, help="Fraction of unusable records tolerated (skipped and "
                  "listed in data_report.json) before the data is refused.")
IMAGE_KEY = typer.Option("filepath", "--image-key", help="CSV column of the image paths (open_clip's --csv-img-key).")
CAPTION_KEY = typer.Option("title", "--caption-key", help="CSV column of the captions (open_clip's --csv-caption-key).")


def _dtype(value: str | None) -> str | None:
    if value is not None and value not in ("auto", "float32", "bfloat16", "int4", "int8", "fp32", "bf16"):
        raise typer.BadParameter(f"{value!r}: use auto, float32, bfloat16, int4 or int8")
    return value


def dtype_option(default: str) -> typer.Option:
    """--dtype of commands that run a language model: auto (the faster of float32 and bfloat16 on this
    host, measured once and cached), float32, bfloat16, int4 (its block Linears in 4 bits, a Q4 GGUF's
    own blocks where it has them; activations bf16) or int8 (8 bits per row)."""
    return typer.Option(default, "--dtype", callback=_dtype, metavar="auto|float32|bfloat16|int4|int8",
                        help=f"The language model's weights: auto (float32 or bfloat16, whichever is faster on this "
                             f"host: measured once, cached), float32, bfloat16, int4 (4-bit block Linears, a Q4 "
                             f"GGUF's own blocks; bf16 activations) or int8 (8 bits per row). Default {default}.")


def say_dtype(dtype: str) -> None:
    """One line on stderr saying what --dtype auto chose and why (nothing for an explicit dtype)."""
    if dtype == "auto":
        from mmfm.precision import lm_weights_dtype

        typer.echo(f"language model: {lm_weights_dtype('auto').describe()}", err=True)