"""`mmfm train clip`, `mmfm eval clip`, `mmfm classify`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmfm.cli import options
from mmfm.errors import InvalidPrompt


def train_clip(
    preset: str = typer.Option("world-tiny", help="Training preset."),
    steps: int = options.STEPS,
    batch_size: int = options.BATCH_SIZE,
    lr: float = options.LR,
    seed: int = options.SEED,
    out: Path = typer.Option(Path("runs/clip"), "--out", help="Run folder: checkpoint, metrics, model/, report."),
    resume: bool = options.RESUME,
    save_every: int = options.SAVE_EVERY,
    bf16: bool = options.BF16,
    scenes: int = options.SCENES,
    evaluate: bool = options.EVALUATE,
    log_every: int = options.LOG_EVERY,
) -> None:
    """Train a CLIP on the Shapes world; works under torchrun (DDP)."""
    from mmfm.train.clip import train_world_clip

    report = train_world_clip(preset, out, resume=resume, scenes=scenes, evaluate=evaluate, steps=steps,
                              batch_size=batch_size, lr=lr, seed=seed, save_every=save_every, bf16=bf16,
                              log_every=log_every)
    if "zeroshot" in report:
        print_report(report)
    typer.echo(f"model: {out / 'model'}   report: {out / 'report.json'}   curves: {out / 'curves.png'}")


def print_report(report: dict) -> None:
    zs = report["zeroshot"]
    lp = report.get("linear_probe", {})
    typer.echo("\nzero-shot top-1 over all 56 color x shape classes")
    typer.echo(f"{'compositions':<14}{'1 template':>12}{'ensemble':>12}{'linear probe':>15}")
    for name in ("seen", "heldout"):
        row = zs[name]
        probe = lp.get(name, {}).get("top1")
        typer.echo(f"{name:<14}{row['single']['top1']:>12.3f}{row['ensemble']['top1']:>12.3f}"
                   f"{(f'{probe:.3f}' if probe is not None else '-'):>15}")
    if "retrieval" in report:
        r = report["retrieval"]
        typer.echo(
            f"retrieval R@1/5/10 text->image {r['image_retrieval_recall@1']:.3f}/{r['image_retrieval_recall@5']:.3f}/"
            f"{r['image_retrieval_recall@10']:.3f}, image->text {r['text_retrieval_recall@1']:.3f}/"
            f"{r['text_retrieval_recall@5']:.3f}/{r['text_retrieval_recall@10']:.3f}"
        )


EVAL_TASKS = ("zeroshot", "retrieval", "linear-probe", "concepts")


def eval_clip(
    model: Path = typer.Option(..., "--model", help="A CLIP folder (mmfm, HF or open_clip)."),
    task: str = typer.Option("zeroshot", help="zeroshot | retrieval | linear-probe | concepts"),
    templates: str = typer.Option("ensemble", help="single | ensemble"),
    prompts: Path = typer.Option(None, "--prompts", help="CuPL-style JSON {class: [sentences]} for zeroshot."),
    n: int = options.bounded(1000, lo=1, hi=10**6, help="Evaluation images per split."),
    out: Path = typer.Option(None, "--out", help="JSON file for the results (default: next to the model)."),
) -> None:
    """Evaluate a CLIP on the Shapes world; prints a table and writes JSON."""
    from mmfm.cli import load_model
    from mmfm.eval.clip_world import linear_probe_world, retrieval_world, zeroshot_world
    from mmfm.models.clip import CLIP

    if task not in EVAL_TASKS:
        raise InvalidPrompt(f"unknown task {task!r}; use {', '.join(EVAL_TASKS)}")
    if templates not in ("single", "ensemble"):
        raise InvalidPrompt(f"unknown templates {templates!r}; use single or ensemble")
    m = load_model(model, CLIP, "eval clip", "zero-shot and retrieval")
    if task == "zeroshot":
        from mmfm.chain.cupl import load_prompts

        extra = load_prompts(prompts) if prompts else None
        res = zeroshot_world(m, m.tokenizer, n=n, prompts=extra)
        key = "single" if templates == "single" else "ensemble"
        typer.echo(
            f"{'compositions':<14}{'top-1':>8}{'top-5':>8}{'per-class':>11}" + ("   prompts top-1" if extra else "")
        )
        for name, row in res.items():
            r = row[key]
            line = f"{name:<14}{r['top1']:>8.3f}{r['top5']:>8.3f}{r['mean_per_class_recall']:>11.3f}"
            if extra:
                line += f"{row['prompts']['top1']:>17.3f}"
            typer.echo(line)
    elif task == "retrieval":
        res = retrieval_world(m, m.tokenizer, n=n)
        for k, v in res.items():
            typer.echo(f"{k:<32}{v:.3f}")
    elif task == "concepts":
        from mmfm.chain.cupl import load_prompts
        from mmfm.eval.clip_world import concepts_world

        res = concepts_world(m, m.tokenizer, n=n, prompts=load_prompts(prompts) if prompts else None)
        typer.echo(f"composite concepts ({len(res['classes'])} classes), top-1:")
        for k in ("names", "descriptions", "both", "definitions"):
            if k in res:
                typer.echo(f"  {k:<14}{res[k]['top1']:.3f}")
    elif task == "linear-probe":
        res = linear_probe_world(m, n_test=n)
        for name, r in res.items():
            typer.echo(f"{name:<10} top-1 {r['top1']:.3f} (weight decay {r['weight_decay']:g})")
    else:
        raise InvalidPrompt(f"unknown task {task!r}; use zeroshot, retrieval, linear-probe or concepts")
    path = out or (model / f"eval_{task}.json")
    path.write_text(json.dumps(res, indent=2))
    typer.echo(f"wrote {path}")


def classify(
    images: list[Path] = typer.Argument(..., help="Image files."),
    labels: str = typer.Option(..., "--labels", help='Comma-separated class names, e.g. "red circle,blue square".'),
    model: Path = typer.Option(..., "--model", help="A CLIP folder."),
    templates: str = typer.Option("world", help="world | openai | simple | single"),
    top: int = typer.Option(5, help="How many classes to print per image."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Zero-shot classify images against your labels; prints ranked probabilities."""
    import torch

    from mmfm.cli import load_model
    from mmfm.eval.templates import TEMPLATE_SETS
    from mmfm.eval.zeroshot import build_classifier, check_labels
    from mmfm.models.clip import CLIP
    from mmfm.vision.io import load_image

    names = check_labels([s.strip() for s in labels.split(",")] if labels.strip() else [])
    if templates != "single" and templates not in TEMPLATE_SETS:
        raise InvalidPrompt(f"unknown templates {templates!r}; use {', '.join(TEMPLATE_SETS)} or single")
    if top < 1:
        raise InvalidPrompt(f"--top must be at least 1 (how many classes to print), got {top}")
    pics = [load_image(p) for p in images]  # InvalidImage before any model work
    m = load_model(model, CLIP, "classify", "class names")
    tpl = ("a photo of {a} {}",) if templates == "single" else templates
    clf = build_classifier(m, m.tokenizer, names, tpl)
    with torch.no_grad():
        x = torch.stack([m.preprocess(p) for p in pics])
        probs = (m.scale() * m.encode_image(x, normalize=True) @ clf).softmax(-1)
    results = []
    for path, p in zip(images, probs):
        order = p.argsort(descending=True)[:top]
        results.append(
            {"image": str(path), "labels": [names[i] for i in order], "probs": [round(p[i].item(), 4) for i in order]}
        )
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for r in results:
        typer.echo(r["image"])
        for lab, pr in zip(r["labels"], r["probs"]):
            typer.echo(f"  {pr:7.2%}  {lab}")
