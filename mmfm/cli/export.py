"""`mmfm export onnx`: a model's towers as ONNX graphs, checked in ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Export a model to another runtime's format.", no_args_is_help=True)


@app.command(name="onnx")
def onnx(
    model: Path = typer.Option(..., "--model", help="A CLIP, CoCa or SAM folder (any format mmfm loads)."),
    out: Path = typer.Option(..., "--out", help="Folder for the graphs (image.onnx + text.onnx, or SAM's "
                             "encoder.onnx + decoder.onnx + sam.onnx), onnx.json and the tokenizer."),
    single_mask: bool = typer.Option(False, "--single-mask", help="SAM: return one mask per prompt, as "
                                     "segment-anything's --return-single-mask (default: all four)."),
) -> None:
    """CLIP's image and text towers (conv stems and attention pooling included) and CoCa's image tower, with a
    dynamic batch; SAM's image encoder, its mask decoder under segment-anything's ONNX input names, and the
    whole model in one graph. Every graph is run in ONNX Runtime and must match mmfm within 1e-4."""
    import mmfm
    from mmfm.cli import output_file
    from mmfm.interop.onnx_export import export_onnx

    output_file(out / "onnx.json")
    m = mmfm.load(model)
    info = export_onnx(m.float().eval(), out, single_mask=single_mask)
    for name, g in info["graphs"].items():
        inputs, outputs = g.get("inputs", [g.get("input")]), g.get("outputs", [g.get("output")])
        typer.echo(f"{name}: {out / g['file']}  ({', '.join(inputs)} -> {', '.join(outputs)}; ONNX Runtime vs "
                   f"mmfm max abs diff {g['max_abs_diff']:.1e})")
    typer.echo(json.dumps({"out": str(out), "graphs": list(info["graphs"])}))
