"""What the `mmfm train ... --data` and `mmfm eval ... --data` commands share: the before / after table
of a fine-tuning run and the one-line summary of what the data reader skipped."""

from __future__ import annotations

from pathlib import Path

import typer


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k} "))
        elif isinstance(v, float):
            out[prefix + k] = v
    return out


def print_finetune(report: dict, out: Path) -> None:
    for line in report.get("data_report", []):
        typer.echo(line)
    if report.get("first_loss") is not None:
        typer.echo(f"loss {report['first_loss']:.4f} -> {report['last_loss']:.4f} "
                   f"over {report['train_config']['steps']} steps ({report['train_seconds']} s)")
    if report.get("after"):
        before, after = _flat(report.get("before") or {}), _flat(report["after"])
        typer.echo(f"{'validation':<40}{'before':>10}{'after':>10}")
        for k, v in after.items():
            b = before.get(k)
            typer.echo(f"{k:<40}{(f'{b:.4f}' if b is not None else '-'):>10}{v:>10.4f}")
    typer.echo(f"model: {out / 'model'}   report: {out / 'report.json'}   data: {out / 'data_report.json'}   "
               f"curves: {out / 'curves.png'}")
