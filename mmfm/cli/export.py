"""`mmfm export onnx`: a model's towers as ONNX graphs, checked in ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Export a model to another runtime's format.", no_args_is_help=True)


@app.command(name="onnx")
def onnx(
    model: Path = typer.Option(..., "--model", help="A CLIP or CoCa folder (any format mmfm loads)."),
    out: Path = typer.Option(..., "--out", help="Folder for image.onnx, text.onnx, onnx.json and the tokenizer."),
) -> None:
    """CLIP's image and text towers (conv stems and attention pooling included), CoCa's image tower, as ONNX
    graphs with a dynamic batch; each is run in ONNX Runtime and must match mmfm within 1e-4."""
    import mmfm
    from mmfm.cli import output_file
    from mmfm.interop.onnx_export import export_onnx

    output_file(out / "onnx.json")
    m = mmfm.load(model)
    info = export_onnx(m.float().eval(), out)
    for name, g in info["graphs"].items():
        typer.echo(f"{name}: {out / g['file']}  ({g['input']} -> {g['output']}; ONNX Runtime vs mmfm max abs "
                   f"diff {g['max_abs_diff']:.1e})")
    typer.echo(json.dumps({"out": str(out), "graphs": list(info["graphs"])}))
