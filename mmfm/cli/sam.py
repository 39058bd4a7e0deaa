"""`mmfm segment`, `mmfm train sam`, `mmfm eval sam`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmfm.cli import load_model, options, output_file
from mmfm.errors import ConfigError, InvalidImage, InvalidPrompt


def _numbers(text: str, n: int, what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise InvalidPrompt(f"{what} {text!r}: expected {n} comma-separated numbers") from None
    if len(vals) != n:
        raise InvalidPrompt(f"{what} {text!r}: expected {n} comma-separated numbers, got {len(vals)}")
    return vals


def parse_point(text: str) -> tuple[float, float, int]:
    """'X,Y' (foreground) or 'X,Y:LABEL' with LABEL 1, 0 or -1."""
    xy, _, label = text.partition(":")
    x, y = _numbers(xy, 2, "point")
    try:
        lab = int(label) if label else 1
    except ValueError:
        raise InvalidPrompt(f"point {text!r}: the label after ':' must be 1, 0 or -1") from None
    return x, y, lab


MAX_SCALE, MAX_OVERLAY_PIXELS = 64, 1 << 26


def _set_image(predictor, arr, folder: Path | None) -> None:
    """set_image, or its saved embedding when `folder` has one for these pixels and this model."""
    import hashlib

    from mmfm.errors import CheckpointError

    if folder is None:
        return predictor.set_image(arr)
    key = hashlib.sha256(str(arr.shape).encode() + arr.tobytes()).hexdigest()[:24]
    file = folder / f"{key}.safetensors"
    if file.is_file():
        try:
            return predictor.load_image_embedding(file)
        except CheckpointError:
            pass  # another model's: embed again below and replace it
    predictor.set_image(arr)
    folder.mkdir(parents=True, exist_ok=True)
    predictor.save_image_embedding(file)


def _segment_folder(folder: Path, model: str, out: Path, points_per_side: int, scale: int) -> None:
    """Automatic masks for every image under `folder`: out/<relative path>.png (overlay) and .json (COCO
    RLE records); unreadable files are listed and skipped."""
    import numpy as np
    from tqdm import tqdm

    from mmfm.index.build import scan
    from mmfm.models.sam import SAM
    from mmfm.models.sam.amg import MAX_POINTS_PER_SIDE, SamAutomaticMaskGenerator
    from mmfm.vision.draw import overlay
    from mmfm.vision.io import load_image
    from mmfm.vision.masks import rle_decode

    if not 1 <= points_per_side <= MAX_POINTS_PER_SIDE:
        raise ConfigError(f"--points-per-side must be 1..{MAX_POINTS_PER_SIDE}, got {points_per_side}")
    files = scan(folder, skip=out)
    if not files:
        raise InvalidPrompt(f"{folder} holds no image files")
    sam = load_model(model, SAM, "segment")
    amg = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side, output_mode="coco_rle")
    bad, total = [], 0
    for rec in tqdm(files, unit="img", desc="segment"):
        try:
            arr = np.asarray(load_image(folder / rec.path))
        except InvalidImage as e:
            bad.append(f"{rec.path}: {e}")
            continue
        recs = amg.generate(arr)
        total += len(recs)
        dest = (out / rec.path).with_suffix("")
        dest.parent.mkdir(parents=True, exist_ok=True)
        masks = [rle_decode(r["segmentation"]) for r in recs]
        s = max(1, min(scale, int((MAX_OVERLAY_PIXELS / max(1, arr.shape[0] * arr.shape[1])) ** 0.5)))
        overlay(arr, np.stack(masks) if masks else None, scale=s).save(f"{dest}.png")
        Path(f"{dest}.json").write_text(json.dumps(recs))
    typer.echo(f"{len(files) - len(bad)} images, {total} masks -> {out}/"
               + (f"; {len(bad)} unreadable skipped: {bad[0]}{' ...' if len(bad) > 1 else ''}" if bad else ""))


def segment(
    image: Path = typer.Argument(..., help="Image file, or a folder of images with --auto."),
    model: str = typer.Option(..., "--model", help="SAM: mmfm folder, HF SamModel folder, official .pth, or a "
                              "shipped name (sam-world-tiny, sam-world-tiny-parts)."),
    point: list[str] = typer.Option(None, "--point", help="X,Y[:LABEL] (1 foreground, 0 background); repeatable."),
    box: str = typer.Option(None, "--box", help="X0,Y0,X1,Y1"),
    auto: bool = typer.Option(False, "--auto", help="Automatic masks for the whole image."),
    text: str = typer.Option(None, "--text", help="Segment what this text describes (needs --clip)."),
    clip: str = typer.Option(None, "--clip", help="CLIP model for --text."),
    single: bool = typer.Option(False, "--single", help="One mask instead of three."),
    points_per_side: int = typer.Option(32, "--points-per-side", help="--auto grid density."),
    out: Path = typer.Option(None, "-o", "--out", help="Overlay PNG; masks go beside it (a folder for a folder; "
                             "default segment.png / masks/)."),
    scale: int = typer.Option(1, "--scale", help="Upsample the overlay (small images)."),
    embeddings: Path = typer.Option(None, "--embeddings", help="Keep the image's SAM embedding in this folder and "
                                    "reuse it next time (prompts then cost a decode only)."),
) -> None:
    """Segment an image with points / a box, automatically (--auto), or from text (--text); --auto also
    segments every image of a folder."""
    import numpy as np
    from PIL import Image

    from mmfm.models.clip import CLIP
    from mmfm.models.sam import SAM
    from mmfm.models.sam.amg import MAX_POINTS_PER_SIDE, SamAutomaticMaskGenerator
    from mmfm.models.sam.predictor import SamPredictor
    from mmfm.vision.draw import overlay
    from mmfm.vision.io import load_image
    from mmfm.vision.masks import coco_rle
    modes = sum([bool(point) or bool(box), auto, text is not None])
    if modes != 1:
        raise InvalidPrompt("give prompts (--point / --box), or --auto, or --text: exactly one kind")
    if image.is_dir():
        if not auto:
            raise InvalidPrompt(f"{image} is a folder: segment a folder with --auto (prompts are per image)")
        return _segment_folder(image, model, out or Path("masks"), points_per_side, scale)
    out = out or Path("segment.png")
    parsed = [parse_point(p) for p in point or []]
    bx = _numbers(box, 4, "box") if box else None
    arr = np.asarray(load_image(image))  # InvalidImage before any model work
    output_file(out)
    if not 1 <= scale <= MAX_SCALE or arr.shape[0] * arr.shape[1] * scale**2 > MAX_OVERLAY_PIXELS:
        raise ConfigError(f"--scale must be 1..{MAX_SCALE} and keep the overlay under {MAX_OVERLAY_PIXELS:,} pixels "
                          f"(the image is {arr.shape[1]} x {arr.shape[0]}), got {scale}")
    if auto and not 1 <= points_per_side <= MAX_POINTS_PER_SIDE:
        raise ConfigError(f"--points-per-side must be 1..{MAX_POINTS_PER_SIDE}, got {points_per_side}")
    if text is not None and not clip:
        raise InvalidPrompt("--text needs a CLIP to read it: add --clip CLIP_DIR")
    sam = load_model(model, SAM, "segment")
    clip_model = load_model(clip, CLIP, "segment --text", "text prompts") if text is not None else None
    stem = out.with_suffix("")
    if auto:
        recs = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side, output_mode="coco_rle").generate(arr)
        from mmfm.vision.masks import rle_decode

        masks = [rle_decode(r["segmentation"]) for r in recs]
        overlay(arr, np.stack(masks) if masks else None, scale=scale).save(out)
        Path(f"{stem}.json").write_text(json.dumps(recs, indent=1))
        typer.echo(f"{len(recs)} masks -> {out}, {stem}.json (COCO RLE)")
        return
    if text is not None:
        if clip is None:
            raise InvalidPrompt("--text needs a CLIP model: --clip DIR")
        from mmfm.models.sam.text import segment as text_segment

        res = text_segment(sam, arr, text, clip=clip_model)
        overlay(arr, res["mask"][None], boxes=[res["box"]], labels=[text], scale=scale).save(out)
        Image.fromarray(res["mask"].astype(np.uint8) * 255).save(f"{stem}_mask.png")
        Path(f"{stem}.json").write_text(json.dumps({k: v for k, v in res.items() if k != "mask"} |
                                                   {"segmentation": coco_rle(res["mask"])}, indent=1))
        typer.echo(f"best region score {res['score']:.3f} -> {out}")
        return
    predictor = SamPredictor(sam)
    _set_image(predictor, arr, embeddings)
    coords = np.array([[x, y] for x, y, _ in parsed]) if parsed else None
    labels = np.array([lab for _, _, lab in parsed]) if parsed else None
    masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=bx, multimask_output=not single)
    order = np.argsort(-scores)
    overlay(arr, masks[order[:1]], boxes=[bx] if bx else None, points=[(x, y) for x, y, _ in parsed], scale=scale).save(
        out
    )
    for rank, i in enumerate(order):
        Image.fromarray(masks[i].astype(np.uint8) * 255).save(f"{stem}_mask{rank}.png")
    Path(f"{stem}.json").write_text(
        json.dumps([{"score": float(scores[i]), "segmentation": coco_rle(masks[i])} for i in order], indent=1)
    )
    for rank, i in enumerate(order):
        typer.echo(f"mask {rank}: predicted IoU {scores[i]:.3f}, area {int(masks[i].sum())} -> {stem}_mask{rank}.png")


def train_sam(
    preset: str = typer.Option("world-tiny", help="Training preset."),
    steps: int = options.STEPS,
    batch_size: int = options.bounded(None, "--batch-size", lo=1, hi=65536, help="Images per step."),
    lr: float = options.LR,
    rounds: int = options.bounded(None, lo=1, hi=64, help="Interactive rounds per step (the paper: 11)."),
    seed: int = typer.Option(None, help="Seed."),
    out: Path = typer.Option(Path("runs/sam"), "--out", help="Run folder."),
    resume: bool = options.RESUME,
    evaluate: bool = options.EVALUATE,
    data: Path = typer.Option(None, "--data", help="Your COCO instances JSON (polygons or RLE) instead of the world."),
    images: Path = options.IMAGES,
    init: str = typer.Option(None, "--from", help="With --data: the SAM to fine-tune (official .pth, transformers or "
                             "mmfm folder)."),
    val_data: Path = options.VAL_DATA,
    val_images: Path = options.VAL_IMAGES,
    val_objects: int = options.bounded(None, "--val-objects", lo=1, hi=10**7,
                                       help="Evaluate at most this many objects."),
    objects_per_image: int = options.bounded(2, "--objects-per-image", lo=1, hi=64, help="Objects decoded per image."),
    freeze_image_encoder: bool = typer.Option(False, "--freeze-image-encoder",
                                              help="Train only the prompt encoder and mask decoder."),
    epochs: float = options.EPOCHS,
    warmup: int = options.WARMUP,
    accum: int = options.ACCUM,
    max_bad: float = options.MAX_BAD,
    precision: str = options.PRECISION,
    bf16: bool = options.BF16,
    compile_step: bool = options.COMPILE,
) -> None:
    """Train SAM on the Shapes world with interactive prompting, or fine-tune one on your COCO instances
    (--data --from)."""
    prec = options.precision_of(precision, bf16)
    if data is not None:
        from mmfm.cli.files import print_finetune
        from mmfm.train.files import finetune_sam

        if init is None:
            raise InvalidPrompt("--data needs --from: the SAM to fine-tune (e.g. sam_vit_b_01ec64.pth)")
        report = finetune_sam(data, init, out, images, val_data, val_images, objects_per_image, rounds or 3,
                              epochs=epochs, max_bad=max_bad, val_objects=val_objects,
                              freeze_image_encoder=freeze_image_encoder, resume=resume, steps=steps,
                              batch_size=batch_size, lr=lr, seed=seed, warmup=warmup, accum=accum, precision=prec,
                              compile=compile_step or None)
        print_finetune(report, out)
        return
    from mmfm.train.sam import train_world_sam

    report = train_world_sam(preset, out, resume=resume, evaluate=evaluate, steps=steps, batch_size=batch_size,
                             lr=lr, seed=seed, rounds=rounds)
    if "eval" in report:
        print_sam_report(report["eval"])
    typer.echo(f"model: {out / 'model'}   report: {out / 'report.json'}   curves: {out / 'curves.png'}")


def eval_sam(
    model: str = typer.Option(..., "--model", help="SAM checkpoint."),
    n: int = options.bounded(300, lo=1, hi=10**6, help="Held-out world scenes."),
    amg_images: int = options.bounded(20, "--amg-images", lo=0, hi=10**5, help="Scenes for automatic-mask recall."),
    out: Path = typer.Option(None, "--out", help="Write the JSON here."),
    clip: str = typer.Option(None, "--clip", help="A CLIP: also score '<color> <shape>' text prompts."),
    text_n: int = options.bounded(50, "--text-n", lo=1, hi=10**5, help="Held-out scenes for the text prompts."),
    data: Path = typer.Option(None, "--data", help="Your COCO instances JSON instead of the world."),
    images: Path = options.IMAGES,
    max_objects: int = options.bounded(None, "--max-objects", lo=1, hi=10**7, help="With --data: at most N objects."),
    max_bad: float = options.MAX_BAD,
) -> None:
    """mIoU from one point (best of 3, oracle, single) and from a box on held-out world scenes, on all
    objects and on overlapping ones; automatic-mask recall; with --clip, text prompts. With --data: the
    point and box mIoU on your COCO instances, at their original size."""
    from mmfm.eval.sam_world import evaluate_sam_world, text_prompt_world
    from mmfm.models.clip import CLIP
    from mmfm.models.sam import SAM

    if data is not None:
        from mmfm.data.coco import read_coco_instances
        from mmfm.data.files import detect_format
        from mmfm.eval.files import sam_files

        detect_format(data, ("coco-instances",))
        coco_images, report = read_coco_instances(data, images, max_bad)
        res = sam_files(load_model(model, SAM, "eval sam"), coco_images, report, max_objects=max_objects)
        typer.echo(report.summary())
        typer.echo(f"{res['objects']} objects: mIoU 1 point best of 3 {res['miou_best3']:.3f}, oracle "
                   f"{res['miou_oracle']:.3f}, single {res['miou_single']:.3f}, box {res['miou_box']:.3f}")
        if out:
            out.write_text(json.dumps({**res, "data": report.to_dict()}, indent=2))
        return
    sam = load_model(model, SAM, "eval sam")
    clip_model = load_model(clip, CLIP, "eval sam --clip", "text prompts") if clip else None
    res = evaluate_sam_world(sam, n=n, amg_images=amg_images)
    if clip_model is not None:
        res.update(text_prompt_world(sam, clip_model, n=text_n))
    print_sam_report(res)
    if out:
        out.write_text(json.dumps(res, indent=2))


def print_sam_report(r: dict) -> None:
    typer.echo(
        f"{'prompt':24s} {'all':>7s} {'overlapping':>12s}   "
        f"({r['objects']} objects, {r['overlapping_objects']} overlapping)"
    )
    for k, name in (
        ("best3", "1 point, best of 3"),
        ("oracle", "1 point, oracle of 3"),
        ("single", "1 point, single mask"),
        ("box", "box"),
    ):
        ov = r[f"miou_{k}_overlapping"]
        typer.echo(f"{name:24s} {r[f'miou_{k}']:7.3f} {ov if ov is None else f'{ov:12.3f}'}")
    if "amg_recall@0.5" in r:
        typer.echo(f"automatic masks: recall@0.5 {r['amg_recall@0.5']:.3f}, @0.75 {r['amg_recall@0.75']:.3f}, "
                   f"{r['amg_masks_per_image']} masks/image")
    if r.get("text_miou") is not None:
        typer.echo(f"text prompts: mIoU {r['text_miou']:.3f}, right object {r['text_hit@0.5']:.3f} "
                   f"({r['text_scenes']} scenes)")
