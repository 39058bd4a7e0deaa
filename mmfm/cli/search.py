"""`mmfm index` and `mmfm search`: a photo folder made searchable by text and by example image."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmfm.cli import options

SHIPPED_CLIP = "clip-world-tiny"


def load_clip(name: str | None):
    """A CLIP by folder / file / hub id, or a shipped checkpoint's name; the string to record with it."""
    from mmfm.cli import load_model
    from mmfm.models.clip import CLIP
    name = name or SHIPPED_CLIP  # a shipped name loads the shipped checkpoint (mmfm.weights.resolve)
    recorded = str(Path(name).resolve()) if Path(name).exists() else name
    return load_model(name, CLIP, "index / search", "text queries"), recorded


def index(
    photos: Path = typer.Argument(..., help="The folder of images (searched recursively)."),
    out: Path = typer.Option(Path("photos.mmfm"), "--out", help="The index folder (made, or updated in place)."),
    model: str = typer.Option(None, "--model", help=f"A CLIP (mmfm, open_clip or transformers); default: the "
                              f"shipped {SHIPPED_CLIP}."),
    batch_size: int = options.bounded(64, "--batch-size", lo=1, hi=4096, help="Images embedded at once."),
    kind: str = typer.Option("auto", "--kind", help="FAISS index: auto (exact up to 100k images, then IVF), flat, "
                             "ivf, ivfpq, hnsw."),
    max_memory_gb: float = typer.Option(4.0, "--max-memory-gb", help="auto: compress (IVF-PQ) past this many GB of "
                                        "vectors."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    precision: str = options.INFER_PRECISION,
) -> None:
    """Embed a folder of photos into a searchable index; a re-run embeds only new or changed files.
    Under torchrun the files are split across ranks."""
    from mmfm.errors import ConfigError
    from mmfm.index.build import update_index
    from mmfm.index.vectors import choose_kind

    choose_kind(1, 1, kind)  # an unknown kind is a ConfigError before the model loads
    if not 0 < max_memory_gb <= 1e6:
        raise ConfigError(f"--max-memory-gb must be positive, got {max_memory_gb}")
    m, name = load_clip(model)
    options.inference_precision(precision, m)
    report = update_index(photos, out, m, name, batch_size=batch_size, kind=kind, max_memory_gb=max_memory_gb)
    if report is None:  # not rank 0
        return
    typer.echo(json.dumps(report.to_dict()) if as_json else f"{report.summary()} -> {out}")


def search(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="An index made by `mmfm index`."),
    query: str = typer.Argument(None, help='What to look for, e.g. "a dog on a beach".'),
    image: Path = typer.Option(None, "--image", help="An example image (alone, or combined with the text)."),
    image_weight: float = typer.Option(0.5, "--image-weight", help="With text and --image: the image's share."),
    k: int = options.bounded(20, "-k", lo=1, hi=10_000, help="How many results."),
    model: str = typer.Option(None, "--model", help="The CLIP (default: the one the index was built with)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    html_out: Path = typer.Option(None, "--html", help="Also write a page of thumbnails here."),
    captions: Path = typer.Option(None, "--eval", help="Instead of a query: text-to-image recall@1/5/10 of the "
                                  "captions in this CSV / COCO captions JSON, through the index."),
    image_key: str = typer.Option("filepath", "--image-key", help="--eval CSV: the image column."),
    caption_key: str = typer.Option("title", "--caption-key", help="--eval CSV: the caption column."),
) -> None:
    """Search an index by text, by example image (--image), or both."""
    from mmfm.cli import output_file
    from mmfm.errors import InvalidPrompt
    from mmfm.index.search import caption_recall, check_model, results_html
    from mmfm.index.search import search as run_search
    from mmfm.index.store import PhotoIndex
    from mmfm.vision.io import load_image

    idx = PhotoIndex(index_dir)
    if captions is not None:
        from mmfm.data.files import detect_format
        from mmfm.data.labeled import read_captions

        fmt = detect_format(captions, ("csv", "coco-captions"))
        data = read_captions(captions, fmt, image_key=image_key, caption_key=caption_key)
        m, _ = load_clip(model or idx.info["model"])
        check_model(idx, m)
        res = caption_recall(idx, m, data)
        typer.echo(json.dumps(res) if as_json else
                   f"text->image R@1/5/10 {res['image_retrieval_recall@1']:.4f}/{res['image_retrieval_recall@5']:.4f}/"
                   f"{res['image_retrieval_recall@10']:.4f} over {res['texts']} captions")
        return
    if query is None and image is None:
        raise InvalidPrompt('give a text query, --image, or both: mmfm search photos.mmfm "a red circle"')
    pic = load_image(image) if image is not None else None  # InvalidImage before any model work
    if html_out is not None:
        output_file(html_out)
    m, _ = load_clip(model or idx.info["model"])
    check_model(idx, m)
    hits = run_search(idx, m, query, pic, k=k, image_weight=image_weight)
    if html_out is not None:
        html_out.write_text(results_html(hits, query or f"like {image.name}"))
    if as_json:
        typer.echo(json.dumps([{"rank": r, "path": str(h.path), "score": round(h.score, 5)}
                               for r, h in enumerate(hits, 1)], indent=1))
        return
    for r, h in enumerate(hits, 1):
        typer.echo(f"{r:3d}  {h.score:.3f}  {h.path}")
    if html_out is not None:
        typer.echo(f"-> {html_out}")
