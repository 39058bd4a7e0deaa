"""Options every `mmfm train ...` command shares, defined once: the same flag, default and help text
everywhere. None means "the preset's value"."""

import typer

STEPS = typer.Option(None, help="Optimizer steps (default: the preset's).")
BATCH_SIZE = typer.Option(None, "--batch-size", help="Global batch size.")
LR = typer.Option(None, help="Peak learning rate.")
SEED = typer.Option(None, help="Seed of the data and the initialisation.")
RESUME = typer.Option(False, "--resume", help="Continue from out/checkpoint.pt.")
SAVE_EVERY = typer.Option(None, "--save-every", help="Checkpoint every N steps.")
BF16 = typer.Option(None, "--bf16/--fp32", help="bf16 autocast (default on).")
EVALUATE = typer.Option(True, "--eval/--no-eval", help="Evaluate after training.")
LOG_EVERY = typer.Option(None, "--log-every", help="Log metrics every N steps.")
