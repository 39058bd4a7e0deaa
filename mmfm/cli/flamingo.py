"""`mmfm train flamingo`, `mmfm eval flamingo`, `mmfm fewshot`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmfm.cli import options
from mmfm.errors import InvalidPrompt


def _load_flamingo(model: Path):
    from mmfm.cli import load_model
    from mmfm.models.flamingo import Flamingo

    return load_model(model, Flamingo, "fewshot", "few-shot prompts")


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InvalidPrompt(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 0:
        raise InvalidPrompt(f"{what} must be non-negative integers, got {text!r}")
    return vals


def train_flamingo(
    preset: str = typer.Option("world-tiny", help="Training preset."),
    out: Path = typer.Option(
        Path("runs/flamingo"), "--out", help="Run folder (model/, curves.png, report.json, fewshot.*)."
    ),
    vision: Path = typer.Option(None, "--vision", help="CLIP for the vision tower (default: the shipped world CLIP)."),
    steps: int = options.STEPS,
    batch_size: int = options.BATCH_SIZE,
    lr: float = options.LR,
    seed: int = options.SEED,
    resume: bool = options.RESUME,
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Few-shot evaluation after training."),
    eval_n: int = options.bounded(60, "--eval-n", lo=1, hi=10**5, help="Episodes per task and number of shots."),
) -> None:
    """Train Flamingo on world episodes: frozen SmolLM2 and world CLIP, learned resampler and gated blocks."""
    from mmfm.eval.fewshot import format_table
    from mmfm.train.flamingo import train_world_flamingo

    report = train_world_flamingo(preset, out, vision=vision, resume=resume, evaluate=evaluate, eval_n=eval_n,
                                  steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    if "fewshot" in report:
        typer.echo(format_table(report["fewshot"]))
    typer.echo(f"model: {out / 'model'}   curves: {out / 'curves.png'}")


def eval_flamingo(
    model: Path = typer.Option(..., "--model", help="A Flamingo folder."),
    n: int = options.bounded(60, lo=1, hi=10**5, help="Held-out episodes per task and number of shots."),
    shots: str = typer.Option("0,4,8", help="Numbers of demonstrations, comma-separated."),
    tasks: str = typer.Option("color,shape,count,new_names", help="Tasks, comma-separated."),
    selection: str = typer.Option("random,rices", help="How demonstrations are chosen: random, rices or both."),
    seed: int = typer.Option(0, help="World seed of the episodes."),
    out: Path = typer.Option(None, "--out", help="Folder for fewshot.json / .csv / .png (default: next to the model)."),
) -> None:
    """Few-shot accuracy vs number of shots on held-out world episodes (OpenFlamingo's prompts)."""
    from mmfm.eval.fewshot import evaluate_fewshot, format_table

    if n < 1:
        raise InvalidPrompt("--n must be >= 1")
    m = _load_flamingo(model)
    res = evaluate_fewshot(m, tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()),
                           shots=_ints(shots, "--shots"), n=n, seed=seed,
                           selections=tuple(s.strip() for s in selection.split(",") if s.strip()), out=out or model)
    typer.echo(format_table(res))
    typer.echo(f"wrote {(out or model) / 'fewshot.png'}")


def parse_fewshot_args(args: list[str]) -> tuple[list[tuple[str, str]], str, str | None]:
    """['--demo', IMG, ANSWER, ..., IMAGE, QUESTION?] -> (demos, image, question)."""
    demos, rest, i = [], [], 0
    while i < len(args):
        if args[i] == "--demo":
            if len(args) - i < 3:
                raise InvalidPrompt("--demo takes two values: an image and its answer (--demo IMG \"answer\")")
            demos.append((args[i + 1], args[i + 2]))
            i += 3
        elif args[i].startswith("--"):
            raise InvalidPrompt(f"unknown option {args[i]}; see mmfm fewshot --help")
        else:
            rest.append(args[i])
            i += 1
    if not demos:
        raise InvalidPrompt("no demonstrations: give at least one --demo IMG \"answer\"")
    if not 1 <= len(rest) <= 2:
        raise InvalidPrompt("after the demonstrations give the query IMAGE and, optionally, a QUESTION")
    return demos, rest[0], rest[1] if len(rest) == 2 else None


def fewshot(
    ctx: typer.Context,
    model: Path = typer.Option(..., "--model", help="A Flamingo folder."),
    max_tokens: int = options.bounded(16, "--max-tokens", lo=1, hi=4096, help="At most this many new tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Answer a query image from demonstrations, in context:

    mmfm fewshot --model DIR --demo IMG "answer" [--demo IMG "answer" ...] IMAGE ["question"]

    With a question, prompts are OpenFlamingo's VQA format (Question: ... Short answer: ...); without,
    its captioning format (Output: ...)."""
    from mmfm.eval.fewshot import answer_from_demos
    from mmfm.vision.io import load_image

    demos, image, question = parse_fewshot_args(list(ctx.args))
    if max_tokens < 1:
        raise InvalidPrompt("--max-tokens must be >= 1")
    pics = [(load_image(Path(p)), a) for p, a in demos]  # InvalidImage before any model work
    query = load_image(Path(image))
    m = _load_flamingo(model)
    answer = answer_from_demos(m, pics, query, question, max_new_tokens=max_tokens)
    if as_json:
        typer.echo(
            json.dumps({"image": image, "question": question, "demos": [list(d) for d in demos], "answer": answer})
        )
    else:
        typer.echo(answer)
