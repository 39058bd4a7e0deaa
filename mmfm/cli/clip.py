"""`mmfm train clip`, `mmfm eval clip`, `mmfm classify`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmfm.cli import options
from mmfm.errors import InvalidPrompt


def train_clip(
    preset: str = typer.Option("world-tiny", help="Training preset (the world; ignored with --data)."),
    steps: int = options.STEPS,
    batch_size: int = options.BATCH_SIZE,
    lr: float = options.LR,
    seed: int = options.SEED,
    out: Path = typer.Option(Path("runs/clip"), "--out", help="Run folder: checkpoint, metrics, model/, report."),
    resume: bool = options.RESUME,
    save_every: int = options.SAVE_EVERY,
    precision: str = options.PRECISION,
    bf16: bool = options.BF16,
    compile_step: bool = options.COMPILE,
    scenes: int = options.SCENES,
    evaluate: bool = options.EVALUATE,
    log_every: int = options.LOG_EVERY,
    data: str = options.DATA,
    fmt: str = options.FORMAT,
    images: Path = options.IMAGES,
    init: Path = typer.Option(None, "--from", help="With --data: the CLIP to fine-tune (mmfm, transformers or "
                              "open_clip folder; default: the shipped world CLIP)."),
    val_data: Path = options.VAL_DATA,
    val_images: Path = options.VAL_IMAGES,
    image_key: str = options.IMAGE_KEY,
    caption_key: str = options.CAPTION_KEY,
    epochs: float = options.EPOCHS,
    warmup: int = options.WARMUP,
    accum: int = options.ACCUM,
    max_bad: float = options.MAX_BAD,
    lock_image: bool = typer.Option(False, "--lock-image", help="LiT: freeze the image tower (open_clip's flag)."),
    lock_image_unlocked: int = options.bounded(0, "--lock-image-unlocked-groups", lo=0, hi=1000,
                                               help="With --lock-image: leave the last N blocks trainable."),
    lock_text: bool = typer.Option(False, "--lock-text", help="Freeze the text tower."),
    classnames: Path = typer.Option(None, "--classnames", help="Class names of an image-folder / CSV --val-data."),
    templates: str = typer.Option(None, "--templates", help="Zero-shot templates of --val-data: a file ({c}) or "
                                  "world | openai | simple."),
) -> None:
    """Train a CLIP on the Shapes world, or fine-tune one on your image-text pairs (--data); works under
    torchrun (DDP)."""
    prec = options.precision_of(precision, bf16)
    if data is not None:
        from mmfm.cli.files import print_finetune
        from mmfm.train.files import finetune_clip

        report = finetune_clip(data, init or _shipped_clip(), out, "clip", fmt, images, image_key, caption_key,
                               val_data, None, val_images, _classnames(classnames), _templates(templates),
                               lock_image, lock_image_unlocked, lock_text, epochs, max_bad, resume, steps=steps,
                               batch_size=batch_size, lr=lr, seed=seed, save_every=save_every, precision=prec,
                               compile=compile_step or None,
                               log_every=log_every, warmup=warmup, accum=accum)
        print_finetune(report, out)
        return
    from mmfm.train.clip import train_world_clip

    report = train_world_clip(preset, out, resume=resume, scenes=scenes, evaluate=evaluate, steps=steps,
                              batch_size=batch_size, lr=lr, seed=seed, save_every=save_every, precision=prec,
                              compile=compile_step or None,
                              log_every=log_every)
    if "zeroshot" in report:
        print_report(report)
    typer.echo(f"model: {out / 'model'}   report: {out / 'report.json'}   curves: {out / 'curves.png'}")


def _image_tower(path):
    """A model whose frozen image features a probe can read (CLIP, SimCLR, CoCa)."""
    import mmfm
    from mmfm.errors import CheckpointError
    from mmfm.models.clip import CLIP
    from mmfm.models.coca import CoCa
    from mmfm.models.simclr import SimCLR

    m = mmfm.load(path)
    if not isinstance(m, (CLIP, SimCLR, CoCa)):
        raise CheckpointError(f"{path} holds a {type(m).__name__}; a linear probe needs an image tower "
                              "(CLIP, SimCLR, CoCa)")
    return m.eval()


def _shipped_clip() -> Path:
    from mmfm.weights import path

    return path("clip-world-tiny")


def _classnames(path: Path | None) -> list[str] | None:
    from mmfm.data.labeled import read_classnames

    return read_classnames(path) if path else None


def _templates(spec: str | None):
    """A template file ({c} or {}), a template set's name, or None (the model's own default)."""
    from mmfm.data.labeled import read_templates
    from mmfm.eval.templates import TEMPLATE_SETS

    if spec is None or spec in TEMPLATE_SETS:
        return spec
    if not Path(spec).is_file():
        raise InvalidPrompt(f"--templates {spec!r}: neither a file nor one of {', '.join(TEMPLATE_SETS)}")
    return read_templates(spec)


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
    data: str = typer.Option(None, "--data", help="Your data instead of the world: an image folder or CSV "
                             "(zeroshot, linear-probe: its training set), captions CSV / COCO captions (retrieval)."),
    test_data: str = typer.Option(None, "--test-data", help="linear-probe: the test set (same classes)."),
    fmt: str = options.FORMAT,
    images: Path = options.IMAGES,
    classnames: Path = typer.Option(None, "--classnames", help="Class names (a line each, or JSON); default: the "
                                    "folder names / the CSV's labels."),
    image_key: str = options.IMAGE_KEY,
    caption_key: str = options.CAPTION_KEY,
    label_key: str = typer.Option("label", "--label-key", help="CSV column of the class labels."),
    max_bad: float = options.MAX_BAD,
    precision: str = options.INFER_PRECISION,
) -> None:
    """Evaluate a CLIP on the Shapes world, or on your data (--data); prints a table and writes JSON.
    With --data, --templates is a file of templates with {c}, or world | openai | simple."""
    def precise(m):  # each loaded model encodes in the asked (or measured) precision
        precise.name = options.inference_precision(precision, m).name  # written into the results JSON
        return m

    _eval_clip(model, task, templates, prompts, n, out, data, test_data, fmt, images, classnames, image_key,
               caption_key, label_key, max_bad, precise)


def _eval_clip(model, task, templates, prompts, n, out, data, test_data, fmt, images, classnames, image_key,
               caption_key, label_key, max_bad, precise) -> None:
    from mmfm.cli import load_model
    from mmfm.eval.clip_world import linear_probe_world, retrieval_world, zeroshot_world
    from mmfm.models.clip import CLIP

    if task not in EVAL_TASKS:
        raise InvalidPrompt(f"unknown task {task!r}; use {', '.join(EVAL_TASKS)}")
    if data is not None:
        return _eval_clip_files(model, task, data, test_data, fmt, images, _classnames(classnames), templates,
                                prompts, image_key, caption_key, label_key, max_bad, out, precise)
    if templates not in ("single", "ensemble"):
        raise InvalidPrompt(f"unknown templates {templates!r}; use single or ensemble")
    m = precise(load_model(model, CLIP, "eval clip", "zero-shot and retrieval"))
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
    res["precision"] = getattr(precise, "name", "fp32")
    path = out or (model / f"eval_{task}.json")
    path.write_text(json.dumps(res, indent=2))
    typer.echo(f"wrote {path}")


def _eval_clip_files(model, task, data, test_data, fmt, images, classnames, templates, prompts, image_key,
                     caption_key, label_key, max_bad, out, precise) -> None:
    from mmfm.cli import load_model
    from mmfm.data.files import detect_format
    from mmfm.data.labeled import read_captions, read_classes
    from mmfm.eval.files import linear_probe_files, retrieval_files, zeroshot_files
    from mmfm.models.clip import CLIP

    if task == "concepts":
        raise InvalidPrompt("--task concepts is the world's; on your data use zeroshot, linear-probe or retrieval")
    if task == "retrieval":
        captioned = read_captions(data, detect_format(data, ("csv", "coco-captions"), fmt), images, image_key,
                                  caption_key, max_bad)
        m = precise(load_model(model, CLIP, "eval clip", "retrieval"))
        res = retrieval_files(m, captioned)
        reports = [captioned.report]
    else:
        labeled = read_classes(data, detect_format(data, ("csv", "imagefolder"), fmt), images, image_key, label_key,
                               classnames, max_bad)
        reports = [labeled.report]
        if task == "zeroshot":
            from mmfm.chain.cupl import load_prompts

            m = precise(load_model(model, CLIP, "eval clip", "zero-shot"))
            tpl = templates if templates not in ("single", "ensemble") else None
            tpl = _templates(tpl) or ("world" if m.config.tokenizer == "world" else "openai")
            res = zeroshot_files(m, labeled, tpl, prompts=load_prompts(prompts) if prompts else None)
        else:
            if test_data is None:
                raise InvalidPrompt("--task linear-probe needs --test-data (the probe is fit on --data)")
            test = read_classes(test_data, detect_format(test_data, ("csv", "imagefolder"), fmt), images, image_key,
                                label_key, classnames or labeled.classnames, max_bad)
            reports.append(test.report)
            m = precise(_image_tower(model))
            res = linear_probe_files(m, labeled, test)
    for r in reports:
        typer.echo(r.summary())
    for k, v in res.items():
        if isinstance(v, (int, float)):
            typer.echo(f"{k:<32}{v:.4f}" if isinstance(v, float) else f"{k:<32}{v}")
    res["data"] = [r.to_dict() for r in reports]
    res["precision"] = getattr(precise, "name", "fp32")
    path = out or (Path(model) / f"eval_{task}_data.json")
    path.write_text(json.dumps(res, indent=2))
    typer.echo(f"wrote {path}")


def classify(
    images: list[Path] = typer.Argument(..., help="Image files."),
    labels: str = typer.Option(..., "--labels", help='Comma-separated class names, e.g. "red circle,blue square".'),
    model: Path = typer.Option(..., "--model", help="A CLIP folder."),
    templates: str = typer.Option("world", help="world | openai | simple | single"),
    top: int = typer.Option(5, help="How many classes to print per image."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    precision: str = options.INFER_PRECISION,
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
    options.inference_precision(precision, m)
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
