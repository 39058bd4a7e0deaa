"""`mmfm train simclr`, `mmfm eval simclr` (probes on frozen features, SimCLR's or CLIP's)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmfm.cli import options


def train_simclr(
    preset: str = typer.Option("world-tiny", help="Training preset (CLIP's world-tiny budget, no text)."),
    steps: int = options.STEPS,
    batch_size: int = options.BATCH_SIZE,
    lr: float = options.LR,
    seed: int = options.SEED,
    out: Path = typer.Option(Path("runs/simclr"), "--out", help="Run folder: checkpoint, metrics, model/, report."),
    resume: bool = options.RESUME,
    save_every: int = options.SAVE_EVERY,
    precision: str = options.PRECISION,
    bf16: bool = options.BF16,
    compile_step: bool = options.COMPILE,
    scenes: int = options.SCENES,
    evaluate: bool = options.EVALUATE,
    log_every: int = options.LOG_EVERY,
    color_jitter: bool = typer.Option(True, "--color-jitter/--no-color-jitter",
                                      help="The ablation: without colour jitter two crops match by colour alone."),
    strength: float = options.bounded(None, "--strength", lo=0.0, hi=4.0, help="Colour jitter strength s."),
    temperature: float = options.bounded(None, "--temperature", lo=1e-3, hi=10.0, help="NT-Xent temperature."),
    min_scale: float = options.bounded(0.08, "--min-scale", lo=0.01, hi=1.0,
                                       help="Smallest crop, as a fraction of the image's area (the paper: 0.08)."),
    hue: float = options.bounded(None, "--hue", lo=0.0, hi=0.5, help="Colour jitter's hue range in turns (default "
                                 "0.2 x strength, the paper's; 0.5: any hue, so hue alone never matches two views)."),
    flat_background: bool = typer.Option(False, "--flat-background", help="Paint every training scene's "
                                         "background flat (no texture or gradient to tell scenes apart)."),
    eval_n: int = options.bounded(1000, "--eval-n", lo=10, hi=10**6, help="Test scenes per split for the probes."),
    data: Path = typer.Option(None, "--data", help="Your images instead of the world: a folder (any depth, labels "
                              "unused) or a CSV's image column; read them with `mmfm eval clip --task linear-probe`."),
    images: Path = options.IMAGES,
    image_key: str = options.IMAGE_KEY,
    max_bad: float = options.MAX_BAD,
) -> None:
    """Train SimCLR on the Shapes world or on your images (two augmented views, NT-Xent); works under
    torchrun (DDP)."""
    prec = options.precision_of(precision, bf16)
    from mmfm.train.simclr import train_world_simclr

    report = train_world_simclr(preset, out, resume=resume, scenes=scenes, evaluate=evaluate, data=data,
                                images=images, image_key=image_key, max_bad=max_bad,
                                color_jitter=color_jitter, strength=strength, temperature=temperature, eval_n=eval_n,
                                min_scale=min_scale, hue=hue, background="flat" if flat_background else None,
                                steps=steps, batch_size=batch_size, lr=lr, seed=seed, save_every=save_every,
                                precision=prec, compile=compile_step or None, log_every=log_every)
    if "probes" in report:
        print_probes(report["probes"])
    typer.echo(f"model: {out / 'model'}   report: {out / 'report.json'}   curves: {out / 'curves.png'}")


def print_probes(p: dict) -> None:
    typer.echo(f"{'target':<18}{'chance':>8}{'1/class':>9}{'10':>7}{'100':>7}{'all':>7}{'held-out':>10}{'1-NN':>7}")
    for t, r in p.items():
        lin = r["linear"]
        row = "".join(f"{lin[k]['seen']:>7.3f}" if k in lin else f"{'-':>7}" for k in ("10", "100", "all"))
        held = lin.get("all", {}).get("heldout")
        typer.echo(f"{t:<18}{r['chance']:>8.3f}{lin['1']['seen']:>9.3f}{row}"
                   f"{(f'{held:.3f}' if held is not None else '-'):>10}{r['knn1']['seen']:>7.3f}")


def eval_simclr(
    model: Path = typer.Option(..., "--model", help="A SimCLR or CLIP folder, or a shipped name (simclr-world-tiny, "
                               "clip-world-tiny): probes on its frozen image features."),
    n: int = options.bounded(1000, lo=10, hi=10**6, help="Test scenes per split."),
    n_train: int = options.bounded(6000, "--n-train", lo=10, hi=10**6, help="Labelled scenes the probes may use."),
    seed: int = typer.Option(0, help="World seed."),
    out: Path = typer.Option(None, "--out", help="JSON file for the results (default: next to the model)."),
) -> None:
    """Linear probes (1, 10, 100, all labels per class) and k-NN on frozen image features: colour, shape,
    colour x shape, size x colour x shape; seen and held-out compositions."""
    import mmfm
    from mmfm.errors import CheckpointError
    from mmfm.eval.probes import probe_world

    m = mmfm.load(model)
    if not hasattr(m, "encode_image") or not hasattr(m.config, "vision"):
        raise CheckpointError(f"{model} holds a {type(m).__name__}; probes need an image tower (SimCLR, CLIP)")
    res = probe_world(m.eval(), n_train=n_train, n_val=min(500, n_train), n_test=n, seed=seed)
    print_probes(res)
    path = out or (model / "eval_probes.json" if model.is_dir() else Path("eval_probes.json"))  # not into a package
    path.write_text(json.dumps(res, indent=2))
    typer.echo(f"wrote {path}")
