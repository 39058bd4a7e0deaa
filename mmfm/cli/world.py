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


@app.command()
def video(
    n: int = options.bounded(4, "--n", lo=1, hi=256, help="How many clips."),
    out: Path = typer.Option(Path("world_video"), "--out", help="Output folder."),
    split: str = typer.Option("train", help="train, val, test or heldout."),
    frames: int = options.bounded(8, "--frames", lo=2, hi=256, help="Frames per clip."),
    size: int = options.bounded(64, lo=16, hi=1024, help="Frame side in pixels."),
    fps: float = options.bounded(2.0, "--fps", lo=0.1, hi=60.0, help="Frames per second of the clip."),
    seed: int = typer.Option(0, help="World seed."),
    scale: int = options.bounded(4, lo=1, hi=8, help="Upsampling of the written clips, for readability."),
    mp4: bool = typer.Option(False, "--mp4", help="Also write each clip as MP4 (PyAV)."),
) -> None:
    """World videos: a GIF per clip with every object's track drawn, and their ground truth as JSON
    (objects, per-frame boxes and points, events with times, the video tasks)."""
    from mmfm.errors import ConfigError
    from mmfm.vision.video import draw_points, write_video
    from mmfm.world.video import VIDEO_SPLITS, clip, record

    if split not in VIDEO_SPLITS:
        raise ConfigError(f"--split {split!r}: use one of {', '.join(VIDEO_SPLITS)}")
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        c = clip(seed, split, i, frames=frames, size=size, fps=fps)
        pts = [[(j, *c.points[t, j]) for j in range(len(c.movers)) if c.visible[t, j]] for t in range(frames)]
        drawn = draw_points(c.frames, pts, scale=scale)
        write_video(drawn, out / f"{split}_{i:05d}.gif", fps=fps)
        if mp4:
            write_video(c.frames, out / f"{split}_{i:05d}.mp4", fps=fps)
        records.append({"clip": f"{split}_{i:05d}", **record(c)})
    (out / "ground_truth.json").write_text(json.dumps(records, indent=1))
    typer.echo(f"wrote {n} clip(s) with tracks to {out} and {out / 'ground_truth.json'}")


@app.command()
def export(
    out: Path = typer.Option(..., "--out", help="Output folder."),
    fmt: str = typer.Option("csv", "--format", help="csv | webdataset | imagefolder | coco | llava"),
    kind: str = typer.Option("scenes", "--kind", help="scenes | concepts | objects | leftmost"),
    split: str = typer.Option("train", help="train, val, test or heldout."),
    n: int = options.bounded(100, "--n", lo=1, hi=10**6, help="How many images."),
    start: int = options.bounded(0, "--start", lo=0, hi=10**9, help="First index (a disjoint set: another start)."),
    size: int = options.bounded(64, lo=16, hi=1024, help="Image side in pixels."),
    seed: int = typer.Option(0, help="World seed."),
) -> None:
    """World data in the ecosystem's formats (open_clip CSV, webdataset, image folders, COCO instances,
    LLaVA JSON): what `mmfm train ... --data` reads."""
    from mmfm.errors import ConfigError
    from mmfm.world import World
    from mmfm.world.export import EXPORT_FORMATS, EXPORT_KINDS, export_world

    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if kind not in EXPORT_KINDS:
        raise ConfigError(f"--kind {kind!r}: use one of {', '.join(EXPORT_KINDS)}")
    path = export_world(World(seed=seed, size=size), out, fmt, kind, split, n, start)
    typer.echo(f"wrote {path}")
