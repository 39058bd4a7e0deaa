"""`mmfm eval compositionality`, `mmfm train negclip`."""

from __future__ import annotations

from pathlib import Path

import typer

from mmfm.cli import options


def eval_compositionality(
    model: Path = typer.Option(..., "--model", help="A CLIP folder (mmfm, transformers or open_clip)."),
    suite: list[str] = typer.Option(
        ["world"],
        "--suite",
        help="winoground, aro-relation, aro-attribution, "
        "aro-coco-order, aro-flickr-order, sugarcrepe, crepe, world (repeatable).",
    ),
    data: Path = typer.Option(None, "--data", help="The folder with the suite's files (not needed for world)."),
    n: int = options.bounded(500, lo=1, hi=10**6, help="World suite: items per kind."),
    out: Path = typer.Option(
        None, "--out", help="Folder for compositionality.json / .csv (default: next to the model)."
    ),
) -> None:
    """Compositionality benchmarks with their published scoring; results as a table, JSON and CSV."""
    from mmfm.cli import load_model
    from mmfm.eval.compositionality import clip_scorer, flatten, run_suite, write_results
    from mmfm.models.clip import CLIP

    m = load_model(model, CLIP, "eval compositionality", "the suites")
    scorer = clip_scorer(m.float().eval())
    results = {}
    for s in suite:
        results[s] = run_suite(s, data, scorer, **({"n": n} if s == "world" else {}))
    js, cs = write_results(results, out or model)
    typer.echo(f"{'suite':<18}{'metric':<34}{'value':>8}")
    for s, res in results.items():
        for k, v in flatten(res).items():
            typer.echo(f"{s:<18}{k:<34}{v:>8.3f}")
        if res.get("skipped"):
            typer.echo(f"{s:<18}{res['skipped']} item(s) skipped: first: {res['skipped_items'][0]}")
    typer.echo(f"wrote {js} and {cs}")


def train_negclip(
    init: Path = typer.Option(..., "--from", help="The CLIP to fine-tune (e.g. runs/quickstart/clip/model)."),
    out: Path = typer.Option(Path("runs/negclip"), "--out", help="Run folder."),
    preset: str = typer.Option("world-tiny", help="Training preset."),
    steps: int = options.STEPS,
    batch_size: int = typer.Option(None, "--batch-size", help="Global batch (half scenes, half their neighbours)."),
    lr: float = options.LR,
    seed: int = typer.Option(None, help="Seed."),
    scenes: int = options.bounded(None, lo=1, hi=10**7, help="Training scenes (default: the preset's)."),
    resume: bool = options.RESUME,
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="World suite and zero-shot before and after."),
    eval_n: int = options.bounded(500, "--eval-n", lo=1, hi=10**6, help="World-suite items per kind."),
    precision: str = options.PRECISION,
    bf16: bool = options.BF16,
    compile_step: bool = options.COMPILE,
    log_every: int = options.LOG_EVERY,
    hard_negative_weight: float = typer.Option(
        None,
        "--hard-negative-weight",
        help="Weight of the per-row caption-vs-own-negative term "
         "(0: NegCLIP's recipe as published; default: the preset's).",
    ),
    min_objects: int = typer.Option(
        None, "--min-objects", help="Fewest objects per training scene (default: the preset's)."
    ),
    relation_steps: int = typer.Option(
        None,
        "--relation-steps",
        help="Steps of the preset's relation phase after the main one (0 skips it; default: the preset's).",
    ),
    data: str = options.DATA,
    fmt: str = options.FORMAT,
    images: Path = options.IMAGES,
    val_data: Path = options.VAL_DATA,
    val_images: Path = options.VAL_IMAGES,
    image_key: str = options.IMAGE_KEY,
    caption_key: str = options.CAPTION_KEY,
    epochs: float = options.EPOCHS,
    warmup: int = options.WARMUP,
    accum: int = options.ACCUM,
    max_bad: float = options.MAX_BAD,
) -> None:
    """Fine-tune a CLIP with NegCLIP's hard negatives (captions and neighbour images) on the world, or on
    your image-text pairs (--data: a hard-negative caption made from each caption by NegCLIP's rules);
    works under torchrun."""
    prec = options.precision_of(precision, bf16)
    if data is not None:
        from mmfm.cli.files import print_finetune
        from mmfm.train.files import finetune_clip

        report = finetune_clip(data, init, out, "negclip", fmt, images, image_key, caption_key, val_data, None,
                               val_images, epochs=epochs, max_bad=max_bad, resume=resume, steps=steps,
                               batch_size=batch_size, lr=lr, seed=seed, precision=prec,
                               compile=compile_step or None, log_every=log_every,
                               warmup=warmup, accum=accum)
        print_finetune(report, out)
        return
    from mmfm.train.negclip import train_negclip as run

    report = run(init, out, preset, scenes=scenes, resume=resume, evaluate=evaluate, eval_n=eval_n, steps=steps,
                 batch_size=batch_size, lr=lr, seed=seed, precision=prec,
                 compile=compile_step or None, log_every=log_every,
                 hard_negative_weight=hard_negative_weight, min_objects=min_objects,
                 relation_steps=relation_steps)
    for when in ("before", "after"):
        if when in report:
            r = report[when]
            suite = "  ".join(f"{k} {v['accuracy']:.3f}" for k, v in r["world_suite"].items())
            zs = "  ".join(f"{k} {v:.3f}" for k, v in r["zeroshot"].items())
            typer.echo(f"{when:<7} swaps: {suite}   zero-shot: {zs}")
    typer.echo(f"model: {out / 'model'}   report: {out / 'report.json'}")


def batch_size_experiment(
    out: Path = typer.Option(
        Path("runs/batch_size"), "--out", help="Folder: one run per batch size, results.json, batch_size.png."
    ),
    batches: str = typer.Option("8,32,128,512", help="Batch sizes, comma-separated."),
    pairs: int = typer.Option(51_200, help="Image-text pairs seen by every run (a multiple of each batch)."),
    eval_n: int = options.bounded(500, "--eval-n", lo=1, hi=10**6, help="Evaluation items per split / kind."),
    seed: int = typer.Option(0, help="Seed."),
    scenes: int = options.bounded(24_000, lo=1, hi=10**7, help="Training scenes in the cache."),
) -> None:
    """Train the world CLIP at several batch sizes on the same pairs; fine-grained zero-shot and swaps vs batch."""
    from mmfm.errors import ConfigError
    from mmfm.train.batch_size import format_results, run_batch_size_experiment

    try:
        bs = tuple(int(b) for b in batches.split(","))
    except ValueError as e:
        raise ConfigError(f"--batches {batches!r}: comma-separated integers, e.g. 8,32,128,512") from e
    results = run_batch_size_experiment(out, bs, pairs=pairs, seed=seed, eval_n=eval_n, scenes=scenes)
    typer.echo(format_results(results))
    typer.echo(f"wrote {out / 'results.json'} and {out / 'batch_size.png'}")
