"""`mmfm quickstart`: the main job on a fresh clone. Shows the Shapes world, trains the world-tiny
CLIP on the CPU, and prints zero-shot top-1 on seen and held-out color x shape compositions with one
template and with the ensemble, next to the linear probe. The trained folder works with
`mmfm classify`."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from mmfm.cli import options


def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Output folder."),
    seed: int = typer.Option(0, help="Seed of the world and of training."),
    steps: int = options.bounded(None, lo=1, hi=10**7, help="Training steps (default: the world-tiny preset's)."),
    scenes: int = options.bounded(None, lo=1, hi=10**7, help="Training scenes (default: the preset's)."),
    eval_n: int = options.bounded(1000, "--eval-n", lo=1, hi=10**6, help="Evaluation images per split."),
) -> None:
    """Look at the world, train the world-tiny CLIP, report zero-shot vs linear probe."""
    from mmfm.cli.clip import print_report
    from mmfm.cli.world import sample
    from mmfm.train.clip import train_world_clip

    t0 = time.perf_counter()
    typer.echo("1/2 the Shapes world")
    sample(n=16, out=out / "world", split="train", size=128, seed=seed, scale=2)
    typer.echo("2/2 CLIP world-tiny: train, then zero-shot on seen and held-out compositions")
    report = train_world_clip("world-tiny", out / "clip", seed=seed, steps=steps, scenes=scenes, eval_n=eval_n)
    print_report(report)
    typer.echo(f"\ndone in {time.perf_counter() - t0:.0f} s. Try:\n"
               f"  mmfm classify {out / 'world' / 'train_00000.png'} --model {out / 'clip' / 'model'} "
               f'--labels "red circle,blue square,green star,white heart"')
