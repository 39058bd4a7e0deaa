"""`mmfm train coca`, `mmfm eval coca`, `mmfm caption`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmfm.cli import options
from mmfm.errors import InvalidPrompt


def train_coca(
    preset: str = typer.Option("world-tiny", help="Training preset."),
    steps: int = options.STEPS,
    batch_size: int = options.BATCH_SIZE,
    lr: float = options.LR,
    seed: int = options.SEED,
    out: Path = typer.Option(Path("runs/coca"), "--out", help="Run folder: checkpoint, metrics, model/, report."),
    resume: bool = options.RESUME,
    save_every: int = options.SAVE_EVERY,
    precision: str = options.PRECISION,
    bf16: bool = options.BF16,
    compile_step: bool = options.COMPILE,
    scenes: int = options.SCENES,
    evaluate: bool = options.EVALUATE,
    eval_n: int = options.bounded(500, "--eval-n", lo=1, hi=10**6, help="Scenes per split for captioning."),
    log_every: int = options.LOG_EVERY,
    data: str = options.DATA,
    fmt: str = options.FORMAT,
    images: Path = options.IMAGES,
    init: Path = typer.Option(None, "--from", help="With --data: the CoCa to fine-tune (mmfm or open_clip)."),
    val_data: Path = options.VAL_DATA,
    val_images: Path = options.VAL_IMAGES,
    image_key: str = options.IMAGE_KEY,
    caption_key: str = options.CAPTION_KEY,
    epochs: float = options.EPOCHS,
    warmup: int = options.WARMUP,
    accum: int = options.ACCUM,
    max_bad: float = options.MAX_BAD,
) -> None:
    """Train a CoCa on the Shapes world (contrastive + captioning), or fine-tune one on your image-text
    pairs (--data --from); works under torchrun (DDP)."""
    prec = options.precision_of(precision, bf16)
    if data is not None:
        from mmfm.cli.files import print_finetune
        from mmfm.train.files import finetune_clip

        if init is None:
            raise InvalidPrompt("--data needs --from: the CoCa to fine-tune")
        report = finetune_clip(data, init, out, "coca", fmt, images, image_key, caption_key, val_data, None,
                               val_images, epochs=epochs, max_bad=max_bad, resume=resume, steps=steps,
                               batch_size=batch_size, lr=lr, seed=seed, save_every=save_every, precision=prec,
                               compile=compile_step or None,
                               log_every=log_every, warmup=warmup, accum=accum)
        print_finetune(report, out)
        return
    from mmfm.train.coca import train_world_coca

    report = train_world_coca(preset, out, resume=resume, scenes=scenes, evaluate=evaluate, eval_n=eval_n, steps=steps,
                              batch_size=batch_size, lr=lr, seed=seed, save_every=save_every, precision=prec,
                              compile=compile_step or None,
                              log_every=log_every)
    if "captioning" in report:
        print_captioning(report["captioning"])
        print_zeroshot(report["zeroshot"])
    typer.echo(f"model: {out / 'model'}   report: {out / 'report.json'}   curves: {out / 'curves.png'}")


def print_captioning(res: dict) -> None:
    typer.echo(f"\n{'captions on':<14}{'BLEU-4':>9}{'CIDEr-D':>9}   example")
    for name, r in res.items():
        ex = r["examples"][0]["caption"] if r.get("examples") else ""
        typer.echo(f"{name:<14}{r['BLEU-4']:>9.3f}{r['CIDEr-D']:>9.3f}   {ex}")


def print_zeroshot(zs: dict) -> None:
    typer.echo(f"\n{'zero-shot':<14}{'1 template':>12}{'ensemble':>12}")
    for name, row in zs.items():
        typer.echo(f"{name:<14}{row['single']['top1']:>12.3f}{row['ensemble']['top1']:>12.3f}")


def _load_coca(model: Path):
    from mmfm.cli import load_model
    from mmfm.models.coca import CoCa

    return load_model(model, CoCa, "caption", "captions")


def eval_coca(
    model: Path = typer.Option(..., "--model", help="A CoCa folder (mmfm or open_clip)."),
    task: str = typer.Option("captioning", help="captioning | zeroshot"),
    n: int = options.bounded(500, lo=1, hi=10**6, help="Evaluation scenes per split."),
    beams: int = options.bounded(1, "--beams", lo=1, hi=64, help="Beam width for captioning."),
    out: Path = typer.Option(None, "--out", help="JSON file for the results (default: next to the model)."),
) -> None:
    """Evaluate a CoCa on the Shapes world: BLEU-4 / CIDEr-D of its captions, or zero-shot top-1."""
    from mmfm.eval.clip_world import zeroshot_world
    from mmfm.eval.coca_world import captioning_world

    if task not in ("captioning", "zeroshot"):
        raise InvalidPrompt(f"unknown task {task!r}; use captioning or zeroshot")
    if beams < 1:
        raise InvalidPrompt(f"--beams must be >= 1, got {beams}")
    m = _load_coca(model)
    if task == "captioning":
        res = captioning_world(m, n=n, num_beams=beams)
        print_captioning(res)
    else:
        res = zeroshot_world(m, m.tokenizer, n=n)
        print_zeroshot(res)
    path = out or (model / f"eval_{task}.json")
    path.write_text(json.dumps(res, indent=2))
    typer.echo(f"wrote {path}")


def caption(
    images: list[Path] = typer.Argument(..., help="Image files."),
    model: Path = typer.Option(..., "--model", help="A CoCa folder (mmfm or open_clip)."),
    beams: int = options.bounded(1, "--beams", lo=1, hi=64, help="Beam width (1 = greedy)."),
    max_tokens: int = options.bounded(None, "--max-tokens", lo=1, hi=4096, help="Most tokens per caption."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling when < 1 (with --seed)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of lines."),
) -> None:
    """Caption images with a CoCa."""
    import torch

    from mmfm.vision.io import load_image

    if beams < 1 or (max_tokens is not None and max_tokens < 1):
        raise InvalidPrompt("--beams and --max-tokens must be >= 1")
    if not 0 < top_p <= 1:
        raise InvalidPrompt(f"--top-p must be in (0, 1], got {top_p}")
    if top_p < 1 and beams > 1:
        raise InvalidPrompt("choose beam search (--beams) or nucleus sampling (--top-p), not both")
    pics = [load_image(p) for p in images]  # InvalidImage before any model work
    m = _load_coca(model)
    with torch.inference_mode():
        x = torch.stack([m.preprocess(p) for p in pics])
        caps = m.caption(x, num_beams=beams, max_new_tokens=max_tokens, top_p=top_p, do_sample=top_p < 1, seed=seed)
    if as_json:
        typer.echo(json.dumps([{"image": str(p), "caption": c} for p, c in zip(images, caps)], indent=2))
        return
    for p, c in zip(images, caps):
        typer.echo(f"{p}: {c}")
