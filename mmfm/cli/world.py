"""`mmfm world ...`: look at the Shapes world."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmfm.cli import options

app = typer.Typer(help="The embedded Shapes world: look at samples and their ground truth.", no_args_is_help=True)


@app.command()
def sample(
    n: int = options.bounded(16, "--n", lo=1, hi=256, help="How many scenes."),
    out: Path = typer.Option(Path("world_sample"), "--out", help="Output folder."),
    split: str = typer.Option("train", help="train, val, test, heldout or concepts."),
    size: int = options.bounded(128, lo=16, hi=1024, help="Image side in pixels."),
    seed: int = typer.Option(0, help="World seed."),
    scale: int = options.bounded(2, lo=1, hi=8, help="Upsampling of the overlay grid, for readability."),
) -> None:
    """Write a PNG grid of scenes with masks, boxes and points overlaid, and a JSON of their ground truth."""
    from mmfm.world import World
    from mmfm.world.export import sample_record, sample_sheet

    world = World(seed=seed, size=size)
    samples = [world.sample(split, i) for i in range(n)]
    out.mkdir(parents=True, exist_ok=True)
    sample_sheet(samples, scale=scale).save(out / "grid.png")
    for s in samples:
        s.image.save(out / f"{split}_{s.index:05d}.png")
    (out / "ground_truth.json").write_text(json.dumps([sample_record(s) for s in samples], indent=1))
    typer.echo(f"wrote {out / 'grid.png'}, {n} images and {out / 'ground_truth.json'}")
