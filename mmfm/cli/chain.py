"""Chaining commands. `mmfm visprog`: an LLM writes a program for the request (or `--program FILE`
gives one), the interpreter runs it on the image(s), and the result and the visual rationale (HTML)
are written. `mmfm cupl generate`: LLM-written class descriptions in CuPL's JSON format."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmfm.cli import options
from mmfm.errors import InvalidPrompt, ProgramError


def _llm(base_url: str | None, model: str | None):
    from mmfm.chain.llm import LocalLLM, OpenAICompatibleLLM

    if base_url:
        return OpenAICompatibleLLM(model=model or "default", base_url=base_url)
    llm = LocalLLM(model=model, dtype="auto")  # a shipped name (visprog-writer-world) loads too
    options.say_dtype("auto")  # after loading: a file refused is one error line, nothing else
    return llm


def visprog(
    request: str = typer.Argument(None, help='What to do, e.g. "Hide the face of the astronaut with a smiley".'),
    image: list[Path] = typer.Option(..., "--image", help="The image; give two (LEFT then RIGHT) for a statement."),
    program: Path = typer.Option(None, "--program", help="Run this program instead of asking the LLM."),
    task: str = typer.Option(None, help="edit | tag | image_question | two_images (default: from the images)."),
    out: Path = typer.Option(
        Path("visprog_out"), "--out", help="Folder for result.png / result.json and rationale.html."
    ),
    clip: Path = typer.Option(None, "--clip", help="CLIP folder for Loc/Select/Classify on open-vocabulary queries."),
    sam: Path = typer.Option(None, "--sam", help="SAM checkpoint for Seg."),
    vqa: Path = typer.Option(
        None, "--vqa", help="LLaVA folder for Vqa (e.g. the shipped world LLaVA for world scenes)."
    ),
    inpaint_model: Path = typer.Option(
        None, "--inpaint-model", help="A local diffusers inpainting pipeline for Replace (default: OpenCV inpainting)."
    ),
    llm_url: str = typer.Option(None, "--llm-url", help="OpenAI-compatible base URL (default: the local SmolLM2)."),
    llm_model: str = typer.Option(None, "--llm-model", help="Model name at --llm-url, or a local GGUF / folder / "
                                  "adapter folder (visprog-writer-world: the shipped tuned writer)."),
    step_timeout: float = options.bounded(120.0, "--step-timeout", lo=0.1, hi=86400, help="Seconds allowed per step."),
) -> None:
    """Visual programming: run a program of vision modules, write the result and its rationale."""
    import mmfm
    from mmfm.chain.visprog import VisProg, parse, write_html
    from mmfm.chain.visprog.program import MAX_PROGRAM_CHARS
    from mmfm.vision.io import load_image

    if not 1 <= len(image) <= 2:
        raise InvalidPrompt("give one --image, or two (LEFT and RIGHT) for a two-image statement")
    task = task or ("two_images" if len(image) == 2 else "edit")
    names = ["LEFT", "RIGHT"] if len(image) == 2 else ["IMAGE"]
    images = {n: load_image(p) for n, p in zip(names, image)}
    if program is None and not (request or "").strip():
        raise InvalidPrompt("say what to do (the request), or give --program FILE")
    loaders = {}
    if clip is not None:
        loaders["clip"] = lambda: mmfm.load(clip)
    if sam is not None:
        loaders["sam"] = lambda: mmfm.load(sam)
    if vqa is not None:
        from mmfm.chain.visprog.backends import llava_vqa

        loaders["vqa"] = lambda: llava_vqa(mmfm.load(vqa))
    if inpaint_model is not None:
        from mmfm.chain.visprog.backends import diffusers_inpainter

        loaders["inpaint"] = lambda: diffusers_inpainter(inpaint_model)
    loaders["llm"] = lambda: _llm(llm_url, llm_model)
    vp = VisProg(loaders=loaders, step_timeout=step_timeout)
    if program is not None:
        if not program.is_file():
            raise InvalidPrompt(f"{program}: no such program file")
        size = program.stat().st_size
        if size > 4 * MAX_PROGRAM_CHARS:  # checked before reading: the file could be gigabytes
            raise ProgramError(f"{program}: {size:,} bytes is too large for a program (at most {MAX_PROGRAM_CHARS:,} "
                               "characters)")
        prog = parse(program.read_text(encoding="utf-8", errors="replace"))
    else:
        prog = vp.write_program(request, task).program
        typer.echo(f"program:\n{prog.source}\n")
    run = vp.run_program(prog, images, task)
    out.mkdir(parents=True, exist_ok=True)
    page = write_html(run, out / "rationale.html", title=request or str(program))
    if not run.ok:
        typer.echo(f"rationale (partial): {page}", err=True)
        raise run.error
    from PIL import Image

    if isinstance(run.result, Image.Image):
        run.result.save(out / "result.png")
        typer.echo(f"result: {out / 'result.png'}")
    else:
        value = run.result if isinstance(run.result, (str, int, float, bool, list)) else repr(run.result)
        if isinstance(value, list):
            value = [getattr(v, "box", v) for v in value]
        (out / "result.json").write_text(json.dumps({"result": value}, default=str))
        typer.echo(f"result: {value}")
    typer.echo(f"rationale: {page}")


cupl_app = typer.Typer(help="CuPL: LLM-written class descriptions for zero-shot classification.", no_args_is_help=True)


@cupl_app.command("generate")
def cupl_generate(
    classes: Path = typer.Option(..., "--classes", help="Class names: one per line, or a JSON list."),
    out: Path = typer.Option(Path("prompts.json"), "--out", help="Where to write {class: [sentences]}."),
    n: int = options.bounded(10, "--n", lo=1, hi=64, help="Answers per class and prompt."),
    temperature: float = options.bounded(0.99, "--temperature", lo=0, hi=2),
    max_tokens: int = options.bounded(50, "--max-tokens", lo=1, hi=4096),
    seed: int = typer.Option(0, "--seed"),
    llm_url: str = typer.Option(None, "--llm-url", help="OpenAI-compatible base URL (default: the local SmolLM2)."),
    llm_model: str = typer.Option(None, "--llm-model", help="Model name at --llm-url, or a local GGUF / folder."),
) -> None:
    """Ask an LLM CuPL's five questions about each class; write CuPL's JSON."""
    from mmfm.chain.cupl import generate_descriptions, save_prompts

    if not classes.is_file():
        raise InvalidPrompt(f"{classes}: no such file")
    text = classes.read_text(encoding="utf-8", errors="replace")
    try:
        names = (
            json.loads(text) if text.lstrip().startswith("[") else [x.strip() for x in text.splitlines() if x.strip()]
        )
    except ValueError as e:
        raise InvalidPrompt(f"{classes}: not a JSON list ({e})") from None
    prompts = generate_descriptions(_llm(llm_url, llm_model), names, n=n, temperature=temperature,
                                    max_tokens=max_tokens, seed=seed)
    save_prompts(out, prompts)
    typer.echo(f"wrote {out}: {sum(map(len, prompts.values()))} descriptions of {len(prompts)} classes")


__all__ = ["visprog", "cupl_app"]


def train_visprog_writer(
    out: Path = typer.Option(Path("runs/visprog-writer"), "--out", help="The adapter folder."),
    steps: int = options.STEPS,
    pairs: int = options.bounded(None, "--pairs", lo=10, hi=10**6, help="Request -> program pairs to train on."),
    lr: float = options.LR,
    rank: int = options.bounded(None, "--rank", lo=1, hi=256, help="LoRA rank."),
    seed: int = typer.Option(0, help="Seed of the pairs and the adapters."),
    precision: str = options.PRECISION,
) -> None:
    """Fine-tune SmolLM2-135M-Instruct with LoRA to write VisProg programs for two-image statements (world
    request -> program pairs in the training wordings); then `mmfm eval visprog-writer --writer OUT`."""
    from mmfm.chain.visprog.writer import PRESET, train_writer

    log = train_writer(out, steps=steps, pairs=pairs, seed=seed, precision=precision or "auto", lr=lr, r=rank)
    p = {**PRESET, **{k: v for k, v in dict(steps=steps, pairs=pairs, lr=lr, r=rank).items() if v is not None}}
    typer.echo(f"trained {p['steps']} steps on {p['pairs']} pairs (LoRA rank {p['r']}); final loss "
               f"{log[-1]['loss']:.4f}")
    typer.echo(f"adapters: {out} (use: mmfm visprog --llm-model {out} ...)")


def eval_visprog_writer(
    writer: str = typer.Option(None, "--writer", help="Adapter folder from `mmfm train visprog-writer`, or "
                               "visprog-writer-world (shipped); default: the untuned SmolLM2 with examples."),
    n: int = options.bounded(300, "--n", lo=1, hi=100_000, help="Requests to write programs for."),
    split: str = typer.Option("heldout", help="heldout (wordings never trained on) or train."),
    max_repairs: int = options.bounded(0, "--max-repairs", lo=0, hi=5, help="Repairs allowed after an error."),
    seed: int = typer.Option(1, help="Seed of the requests."),
    out: Path = typer.Option(None, "--out", help="Write the result as JSON here."),
) -> None:
    """Program validity and exact match of a program writer on world requests, by statement kind."""
    from mmfm.chain.llm import LocalLLM
    from mmfm.chain.visprog.writer import evaluate_writer
    from mmfm.course.stats import fmt, wilson

    if split not in ("heldout", "train"):
        raise InvalidPrompt(f"--split {split!r}: use heldout or train")
    res = evaluate_writer(LocalLLM(model=writer), n=n, split=split, seed=seed, max_repairs=max_repairs)
    for key in ("valid", "exact"):
        typer.echo(f"{key:6s} {fmt(wilson(res[key] / n, n))}  ({res[key]}/{n}, {split} wordings)")
    for kind, d in res["by_kind"].items():
        typer.echo(f"  {kind:8s} valid {d['valid']}/{d['n']}  exact {d['exact']}/{d['n']}")
    for m in res["misses"][:3]:
        typer.echo(f"miss: {m['request']}\n  got: {m['got'][:200]!r}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
