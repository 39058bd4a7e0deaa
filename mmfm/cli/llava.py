"""`mmfm ask`, `mmfm point`, `mmfm train llava`, `mmfm eval llava`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmfm.cli import options
from mmfm.errors import InvalidPrompt
from mmfm.vision.transforms import crop_window  # noqa: F401 - kept importable from here


def _load_llava(model: Path | None, dtype: str = "float32", shipped: str = "llava-world-tiny"):
    from mmfm.cli import load_model
    from mmfm.models.llava import Llava

    if model is None:  # a shipped world model (SmolLM2 + LoRA adapters, trained on the Shapes world)
        from mmfm.weights import path

        model = path(shipped)
    return load_model(model, Llava, "ask / point", "answers", dtype=dtype)


def ask(
    image: Path = typer.Argument(..., help="Image file."),
    question: str = typer.Argument(..., help="The question, e.g. 'How many red circles are there?'."),
    model: Path = typer.Option(
        None, "--model", help="A LLaVA folder (mmfm or transformers); default: the shipped world LLaVA."
    ),
    max_tokens: int = options.bounded(64, "--max-tokens", lo=1, hi=4096, help="At most this many new tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    dtype: str = options.dtype_option("float32"),
) -> None:
    """Answer a question about an image."""
    from mmfm.vision.io import load_image

    if not question.strip():
        raise InvalidPrompt("the question is empty")
    if max_tokens < 1:
        raise InvalidPrompt("--max-tokens must be >= 1")
    pic = load_image(image)  # InvalidImage before any model work
    m = _load_llava(model, dtype or "float32")
    answer = m.ask(pic, question, max_new_tokens=max_tokens)
    typer.echo(json.dumps({"image": str(image), "question": question, "answer": answer}) if as_json else answer)


def point(
    image: Path = typer.Argument(..., help="Image file."),
    query: str = typer.Argument(..., help="What to point at, e.g. 'the blue squares'."),
    model: Path = typer.Option(
        None, "--model", help="A LLaVA / Molmo-style folder trained to point; default: the shipped world Molmo."
    ),
    out: Path = typer.Option(Path("points.png"), "-o", "--out", help="PNG with the points drawn."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Point at things in an image (Molmo's format) and draw the points."""
    from mmfm.text.pointing import parse_points
    from mmfm.vision.draw import overlay
    from mmfm.vision.io import load_image

    if not query.strip():
        raise InvalidPrompt("the query is empty; say what to point at")
    pic = load_image(image)
    m = _load_llava(model, shipped="molmo-world-tiny")
    q = query.strip()
    q = q[4:] if q.lower().startswith("the ") else q
    answer = m.ask(pic, f"Point to the {q}.", max_new_tokens=200)
    left, top, side = crop_window(pic.width, pic.height)
    pts = [(left + x * side / 100.0, top + y * side / 100.0) for x, y in parse_points(answer)]
    scale = max(1, 256 // max(pic.width, pic.height))
    overlay(pic, points=pts, scale=scale).save(out)
    if as_json:
        typer.echo(json.dumps({"image": str(image), "query": query, "answer": answer, "points": pts, "png": str(out)}))
    else:
        typer.echo(f"{answer}\n{len(pts)} point(s) -> {out}")


def train_llava(
    stage: int = typer.Option(..., "--stage", help="1: projector on captions; 2: projector + LoRA on instructions."),
    preset: str = typer.Option(
        "world-tiny", help="Training preset (world-tiny: Molmo connector; world-tiny-llava: mlp2x_gelu)."
    ),
    out: Path = typer.Option(Path("runs/llava"), "--out", help="Run folder; stage N writes out/stageN."),
    init: Path = typer.Option(None, "--from", help="Stage 2's starting model (default out/stage1/model)."),
    vision: Path = typer.Option(
        None,
        "--vision",
        help="A CLIP for the vision tower: stage 1 builds on it (default: the shipped world CLIP); "
         "stage 2 swaps it in for --from's.",
    ),
    steps: int = options.STEPS,
    batch_size: int = options.BATCH_SIZE,
    lr: float = options.LR,
    seed: int = options.SEED,
    resume: bool = typer.Option(False, "--resume", help="Continue from out/stageN/checkpoint.pt."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate after stage 2."),
    eval_n: int = options.bounded(100, "--eval-n", lo=1, hi=10**5, help="Questions per type for the evaluation."),
    precision: str = options.PRECISION,
    bf16: bool = options.BF16,
    compile_step: bool = options.COMPILE,
    qa_weights: str = typer.Option(
        None,
        "--qa-weights",
        help="Stage 2: weights of the question types in single-question conversations, "
         "e.g. shape=3,color=2 (others 1).",
    ),
    kind_weights: str = typer.Option(
        None,
        "--kind-weights",
        help="Stage 2: weights of the conversation kinds (qa, multi, caption, point, count; defaults "
         "0.35, 0.2, 0.05, 0.2, 0.2), e.g. point=0.4,count=0.3.",
    ),
    crowded: float = typer.Option(0.0, "--crowded-counts", help="Stage 2 on the world: share (0-1) of the count "
                                  "conversations asked about a scene with 4 or more of the counted thing."),
    crowded_points: float = typer.Option(0.0, "--crowded-points", help="Stage 2 on the world: share (0-1) of the "
                                         "pointing conversations asking for 4 or more things."),
    max_objects: int = options.bounded(5, "--max-objects", lo=1, hi=12, help="On the world: the most objects a "
                                       "training scene holds (the world's default 5)."),
    pool_size: int = options.bounded(None, "--pool-size", lo=1, hi=64, help="Molmo connector: p x p patches per "
                                     "image token (2: 16 tokens per world image; 1: 64), also on a --from model."),
    crops: int = options.bounded(None, "--crops", lo=1, hi=4, help="Molmo connector, on the world: Molmo's "
                                 "multi-crop, the world drawn at N x 64 px and read whole and as N x N tiles (2: "
                                 "16 + 64 tokens at 2x2 pooling), also on a --from model."),
    train_vision: bool = typer.Option(False, "--train-vision", help="On the world (ignored with --data): train the "
                                      "vision tower too, as Molmo does (LLaVA keeps it frozen)."),
    image_layout: bool = typer.Option(False, "--image-layout", help="On the world: Molmo's start / column / end "
                                      "tokens around the image tokens (molmo connector), also on a --from model."),
    train_lm: bool = typer.Option(False, "--train-lm", help="On the world, stage 2: train the whole LM (as Molmo) "
                                  "instead of LoRA adapters; the model folder then holds the LM (~540 MB fp32)."),
    data: Path = typer.Option(None, "--data", help="Your LLaVA JSON / JSONL (image + conversations) instead of "
                              "the world; --from defaults to the shipped world LLaVA."),
    images: Path = options.IMAGES,
    val_data: Path = options.VAL_DATA,
    val_images: Path = options.VAL_IMAGES,
    val_n: int = options.bounded(None, "--val-n", lo=1, hi=10**6, help="Evaluate at most N records of --val-data."),
    lora_rank: int = options.bounded(16, "--lora-rank", lo=0, hi=4096, help="With --data, stage 2: LoRA rank "
                                     "(0: train the whole LM); a model with adapters keeps its own."),
    max_len: int = options.bounded(512, "--max-len", lo=8, hi=1 << 20, help="Tokens per conversation (longer: cut)."),
    epochs: float = options.EPOCHS,
    warmup: int = options.WARMUP,
    accum: int = options.ACCUM,
    max_bad: float = options.MAX_BAD,
) -> None:
    """Train LLaVA on the Shapes world with SmolLM2-135M-Instruct (two stages, as LLaVA), or fine-tune a
    LLaVA on your LLaVA JSON (--data)."""
    prec = options.precision_of(precision, bf16)
    if data is not None:
        from mmfm.cli.files import print_finetune
        from mmfm.train.files import finetune_llava

        report = finetune_llava(data, init, out, images, stage, lora_rank, val_data=val_data, val_images=val_images,
                                max_len=max_len, epochs=epochs, max_bad=max_bad, val_n=val_n, resume=resume,
                                steps=steps, batch_size=batch_size, lr=lr, seed=seed, precision=prec,
                                compile=compile_step or None, warmup=warmup,
                                accum=accum)
        print_finetune(report, out)
        return
    from mmfm.eval.llava_world import format_report
    from mmfm.train.llava import train_world_llava

    report = train_world_llava(
        stage,
        preset,
        out,
        init=init,
        vision=vision,
        resume=resume,
        evaluate=evaluate,
        eval_n=eval_n,
        qa_weights=qa_weights,
        kind_weights=kind_weights,
        pool_size=pool_size,
        crops=crops,
        train_vision=train_vision,
        image_layout=image_layout,
        train_lm=train_lm,
        crowded=crowded,
        crowded_points=crowded_points,
        max_objects=max_objects,
        precision=prec, compile=compile_step or None,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
    )
    if "test" in report:
        typer.echo(format_report(report))
    typer.echo(f"model: {out / f'stage{stage}' / 'model'}   curves: {out / f'stage{stage}' / 'curves.png'}")


def eval_llava(
    model: Path = typer.Option(..., "--model", help="A LLaVA folder."),
    n: int = options.bounded(100, lo=1, hi=10**5, help="Questions per type (and counting / pointing items) per split."),
    out: Path = typer.Option(None, "--out", help="Folder for eval.json and points.png (default: next to the model)."),
    seed: int = typer.Option(
        0, help="World seed: which new scenes are drawn (the accuracy moves by a few points between seeds at n=200)."
    ),
    data: Path = typer.Option(None, "--data", help="Your LLaVA JSON: each record's last answer is generated and "
                              "compared with the reference (--n records at most)."),
    images: Path = options.IMAGES,
    max_bad: float = options.MAX_BAD,
    crowded: int = options.bounded(0, "--crowded", lo=0, hi=20, help="Also count on --n scenes with at least this "
                                   "many of the subject (4: where pointing first should pay); 0: off."),
    count_objects: int = options.bounded(0, "--count-objects", lo=0, hi=12, help="Also count on scenes of up to "
                                         "this many objects (the world's have at most 5), direct vs by pointing, "
                                         "--count-n questions for each true count; writes counting.png. 0: off."),
    count_n: int = options.bounded(20, "--count-n", lo=1, hi=10**4, help="With --count-objects: questions a count."),
    apart: bool = typer.Option(False, "--apart", help="Draw every world scene with objects of one colour apart, "
                               "so each count can be read by eye (by default same-coloured objects may overlap "
                               "into one blob)."),
) -> None:
    """VQA by question type, counting direct vs by pointing, and pointing F1 on new world scenes; with
    --data, exact match and answer loss on your LLaVA JSON."""
    from mmfm.eval.llava_world import evaluate_llava_world, format_report

    if n < 1:
        raise InvalidPrompt("--n must be >= 1")
    if data is not None:
        from mmfm.data.files import detect_format
        from mmfm.data.instructions import read_instructions
        from mmfm.eval.files import llava_files

        detect_format(data, ("llava",))
        records, report = read_instructions(data, images, max_bad)
        res = llava_files(_load_llava(model), records[:n], report)
        typer.echo(report.summary())
        typer.echo(f"{res['records']} records: exact match {res['exact_match']:.3f}, "
                   f"answer loss {res['answer_loss']:.4f}")
        path = out or Path(model) / "eval_data.json"
        path.write_text(json.dumps({**res, "data": report.to_dict()}, indent=1))
        typer.echo(f"wrote {path}")
        return
    m = _load_llava(model)
    report = evaluate_llava_world(m, n=n, seed=seed, out=out or model, crowded=crowded, count_objects=count_objects,
                                  count_n=count_n, apart=apart)
    typer.echo(format_report(report))
    typer.echo(f"wrote {(out or model) / 'eval.json'}")
