"""`mmfm`: the command-line entry point. Subcommands live in small modules and register here."""

from __future__ import annotations

import sys

import typer

from mmfm.errors import MMFMError

app = typer.Typer(
    name="mmfm",
    help="Multimodal foundation models from the model code up, trainable on an embedded world of shapes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the mmfm version."""
    import mmfm

    typer.echo(mmfm.__version__)


train_app = typer.Typer(help="Train a model on the Shapes world.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a model.", no_args_is_help=True)
experiment_app = typer.Typer(help="Experiments that reproduce a claim of the course.", no_args_is_help=True)


def _register() -> None:
    from mmfm.cli import (
        chain,
        clip,
        coca,
        compositionality,
        course,
        export,
        flamingo,
        llava,
        lm,
        molmo2,
        quickstart,
        sam,
        search,
        serve,
        simclr,
        world,
    )

    app.add_typer(world.app, name="world")
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")
    train_app.command(name="clip")(clip.train_clip)
    eval_app.command(name="clip")(clip.eval_clip)
    app.command(name="classify")(clip.classify)
    app.command(name="quickstart")(quickstart.quickstart)
    train_app.command(name="sam")(sam.train_sam)
    eval_app.command(name="sam")(sam.eval_sam)
    app.command(name="segment")(sam.segment)
    train_app.command(name="simclr")(simclr.train_simclr)
    eval_app.command(name="simclr")(simclr.eval_simclr)
    train_app.command(name="coca")(coca.train_coca)
    eval_app.command(name="coca")(coca.eval_coca)
    app.command(name="caption")(coca.caption)
    train_app.command(name="llava")(llava.train_llava)
    eval_app.command(name="llava")(llava.eval_llava)
    app.command(name="ask")(molmo2.ask)  # one image -> LLaVA; a video or image set -> Molmo2
    app.command(name="point")(molmo2.point)
    app.command(name="track")(molmo2.track)
    train_app.command(name="molmo2")(molmo2.train_molmo2)
    eval_app.command(name="molmo2")(molmo2.eval_molmo2)
    train_app.command(name="flamingo")(flamingo.train_flamingo)
    eval_app.command(name="flamingo")(flamingo.eval_flamingo)
    app.command(name="fewshot", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        flamingo.fewshot)
    eval_app.command(name="compositionality")(compositionality.eval_compositionality)
    train_app.command(name="negclip")(compositionality.train_negclip)
    app.add_typer(experiment_app, name="experiment")
    app.add_typer(export.app, name="export")
    app.add_typer(course.app, name="course")
    experiment_app.command(name="batch-size")(compositionality.batch_size_experiment)
    app.command(name="visprog")(chain.visprog)
    train_app.command(name="visprog-writer")(chain.train_visprog_writer)
    eval_app.command(name="visprog-writer")(chain.eval_visprog_writer)
    app.add_typer(chain.cupl_app, name="cupl")
    app.command(name="index")(search.index)
    app.command(name="search")(search.search)
    app.command(name="chat")(lm.chat)
    app.command(name="serve")(serve.serve)
    app.command(name="serve-llm")(lm.serve_llm)  # = serve --llava none --clip none --sam none
    app.add_typer(lm.lora_app, name="lora")


_register()


def main() -> None:
    from mmfm.runtime import tune_malloc

    tune_malloc()  # large tensors stay in the heap instead of page-faulting in again (see mmfm.runtime)
    try:
        app()
    except MMFMError as e:  # typed errors are the user's to fix: one clear line, no traceback
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
