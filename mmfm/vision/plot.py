"""Figures drawn with matplotlib (the plotting library users know): training curves, accuracy against a
variable, grouped bars with intervals. Each returns a PIL image so callers save PNGs the same way as
every other picture mmfm writes; the Agg backend draws without a display."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402
from PIL import Image  # noqa: E402


def _to_image(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _finite(y, log_y: bool) -> bool:
    return y is not None and math.isfinite(y) and (y > 0 or not log_y)


def line_plot(series: dict[str, list[tuple[float, float]]], title: str = "", xlabel: str = "", size=(640, 400),
              log_y: bool = False, markers: bool = False, ylabel: str = "", log_x: bool = False) -> Image.Image:
    """series: name -> [(x, y)]. One panel, shared axes, the legend where it hides the least data."""
    fig, ax = plt.subplots(figsize=(size[0] / 100, size[1] / 100))
    drawn = 0
    for name, s in series.items():
        pts = [(x, y) for x, y in s if _finite(y, log_y)]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if markers or len(pts) == 1 else None, markersize=4, linewidth=1.6, label=name)
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    if log_y:
        ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 8, 16, 32 rather than 2^3, 2^4, 2^5
    elif drawn:
        # whole steps / shots / sizes get whole ticks (no "207.5"): integers when every x is one
        if all(float(x).is_integer() for s in series.values() for x, _ in s):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn > 1:
        ax.legend(loc="best", fontsize=8, frameon=False)
    fig.tight_layout()
    return _to_image(fig)


def bar_plot(groups: dict[str, dict[str, tuple[float, float, float] | float]], title: str = "", ylabel: str = "",
             size=(640, 400), ylim: tuple[float, float] | None = None) -> Image.Image:
    """groups: group -> {bar name -> value or (value, low, high)}. Bars side by side in each group,
    error bars where an interval is given (e.g. a 95% bootstrap interval)."""
    fig, ax = plt.subplots(figsize=(size[0] / 100, size[1] / 100))
    names = list(dict.fromkeys(b for g in groups.values() for b in g))
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for i, g in enumerate(groups.values()):
            if name not in g:
                continue
            v = g[name]
            v, a, b = v if isinstance(v, tuple) else (v, v, v)
            xs.append(i + (k - (len(names) - 1) / 2) * width)
            ys.append(v)
            lo.append(max(0.0, v - a))
            hi.append(max(0.0, b - v))
        ax.bar(xs, ys, width=width * 0.95, label=name, yerr=[lo, hi] if any(lo) or any(hi) else None, capsize=3)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    if len(names) > 1:
        ax.legend(loc="best", fontsize=8, frameon=False)
    fig.tight_layout()
    return _to_image(fig)
