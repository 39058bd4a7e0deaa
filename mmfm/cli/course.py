"""`mmfm course report`: the course's claims measured and written up as one HTML page."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="The course's claims, measured on the world models.", no_args_is_help=True)


@app.command()
def report(
    out: Path = typer.Option(Path("report"), "--out", help="Folder for index.html, report.json and figures/."),
    quick: bool = typer.Option(False, "--quick", help="The reduced setting CI runs (fewer items, wider intervals)."),
    only: list[str] = typer.Option(None, "--only", help="Measure only these claims (repeat; keys as in report.json)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the evaluation scenes (the models are the shipped ones)."),
    markdown: bool = typer.Option(False, "--markdown", help="Also print the table as Markdown (for bench/RESULTS.md)."),
    full: bool = typer.Option(False, "--full", help="Retrain the claims that rest on training runs (batch size, CoCa, "
                              "Flamingo, NegCLIP, Molmo's recipe) once per --seeds instead of showing recorded "
                              "runs: hours on 2 cores; resumes from OUT/runs."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="World seeds of the --full runs, comma-separated."),
    full_scale: float = typer.Option(1.0, "--full-scale", hidden=True,
                                     help="Shorten every --full run to this fraction (checks the wiring only)."),
) -> None:
    """Measure every claim of the course on the shipped world models (a recorded run where a claim needs long
    training) and write OUT/index.html: the lecture's statement, the measurement with its 95% interval, a
    figure, and whether it holds."""
    from mmfm.course import build_report, markdown_table
    from mmfm.errors import ConfigError

    try:
        seed_list = tuple(int(x) for x in seeds.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: give integers separated by commas, e.g. 0,1,2") from None
    rep = build_report(out, quick=quick, only=only, seed=seed, echo=typer.echo, full=full, seeds=seed_list,
                       full_scale=full_scale)
    held = sum(c["holds"] is True for c in rep["claims"])
    typer.echo(f"{held} of {len(rep['claims'])} claims hold; report: {out / 'index.html'} ({rep['seconds']:.0f} s)")
    if markdown:
        typer.echo(markdown_table(rep))
