"""Claims that rest on training runs longer than the report's budget: read from the recorded runs of
`recorded.json`, or retrained on several seeds with `--full` (mmfm.course.retrain). Either way a claim
gets one record per seed; with several, its numbers are the mean over seeds with the min-max spread."""

from __future__ import annotations

import numpy as np

from mmfm.course.claims.base import RECORDED, Context, Result, Row
from mmfm.course.stats import over_seeds, wilson
from mmfm.vision.plot import line_plot


def seed_row(name: str, records: list[dict], get, n: int | None) -> Row:
    """One seed: the value with its Wilson interval (a proportion on n items); several: mean [min, max]."""
    if len(records) == 1:
        v = get(records[0])
        return Row.of(name, wilson(v, n) if n and v <= 1 else (v, float("nan"), float("nan")), n)
    return Row.of(f"{name}, {len(records)} seeds (mean [min, max])", over_seeds([get(r) for r in records]), n)


def _seeds(records: list[dict]) -> str:
    return "One seed." if len(records) == 1 else f"Mean of {len(records)} seeds."


def batch_size(ctx: Context) -> Result:
    recs, source = ctx.records("batch_size")
    n = RECORDED["batch_size"]["n_per_point"]
    batches = recs[0]["series"]["batch"]
    keys = [k for k in recs[0]["series"] if k != "batch"]
    mean = {k: [float(np.mean([r["series"][k][i] for r in recs])) for i in range(len(batches))] for k in keys}
    rows = []
    for i, b in enumerate(batches):
        for k, name in (("fine_grained", "fine-grained (112 classes)"), ("attribute_swap", "attribute swap")):
            rows.append(seed_row(f"batch {b}: {name}", recs, lambda r, i=i, k=k: r["series"][k][i], n))
    series = {k.replace("_", " "): list(zip(batches, mean[k])) for k in keys}
    fig = ctx.figure("batch_size.png", line_plot(series, xlabel="batch size", ylabel="accuracy", markers=True,
                                                 log_x=True, title="world CLIP, same pairs seen at every batch size"))
    fine = mean["fine_grained"]
    holds = fine[2] > fine[1] > fine[0] and max(mean["attribute_swap"]) < 0.55
    why = ("Bigger contrastive batches hold more near-identical negatives, so finer concepts (size x colour x "
           "shape) are learned, 8 -> 128; swaps stay at chance at every batch size (a bag of words). Batch 512 "
           f"falls back: with the same pairs it gets only 400 updates. {_seeds(recs)}")
    head = "fine-grained " + ", ".join(f"{f:.2f}" for f in fine) + " at batch " + "/".join(map(str, batches))
    return Result(rows, bool(holds), why, fig, headline=head, source=source)


def coca(ctx: Context) -> Result:
    recs, source = ctx.records("coca")
    n = RECORDED["coca"]["n"]
    rows = [seed_row(k, recs, lambda r, k=k: r["rows"][k], n) for k in recs[0]["rows"]]
    v = {k: float(np.mean([r["rows"][k] for r in recs])) for k in recs[0]["rows"]}
    holds = v["CoCa zero-shot held-out"] >= v["same architecture, caption loss 0"] - 0.02
    why = ("Adding the captioning loss leaves zero-shot within a point of the same model trained without it, "
           f"and the model captions (CIDEr-D above). {_seeds(recs)}")
    head = (f"zero-shot held-out {v['CoCa zero-shot held-out']:.3f} vs {v['same architecture, caption loss 0']:.3f} "
            f"without captioning; CIDEr-D {v['CIDEr-D held-out']:.2f}")
    return Result(rows, bool(holds), why, None, headline=head, source=source)


def flamingo(ctx: Context) -> Result:
    recs, source = ctx.records("flamingo")
    shots, n = recs[0]["shots"], recs[0]["n"]
    rows = []
    for task in ("new_names", "color", "count"):
        for i, k in enumerate(shots):
            rows.append(seed_row(f"{task.replace('_', ' ')}, {k} shots", recs, lambda r, t=task, i=i: r[t][i], n))
    mean = {t: [float(np.mean([r[t][i] for r in recs])) for i in range(len(shots))]
            for t in ("new_names", "color", "count")}
    fig = ctx.figure("flamingo.png", line_plot({t.replace("_", " "): list(zip(shots, mean[t])) for t in mean},
                                               xlabel="shots", ylabel="accuracy", markers=True,
                                               title="Flamingo few-shot"))
    holds = mean["new_names"][1] - mean["new_names"][0] >= 0.5
    why = ("Names that exist only in the prompt go from 0 to near 1 with 4 demonstrations; what training taught "
           f"(colour, count) stays flat. {_seeds(recs)}")
    head = "new names " + " -> ".join(f"{a:.2f}" for a in mean["new_names"]) + " at " + "/".join(map(str, shots))
    return Result(rows, bool(holds), why, fig, headline=head, source=source)


def negclip(ctx: Context) -> Result:
    recs, source = ctx.records("negclip")
    gains: dict[str, list[float]] = {}
    seeds: dict[str, list] = {}
    for run in recs:
        for k in ("attribute_swap", "relation_swap", "word_order"):
            if k in run.get("after", {}) and k in run.get("before", {}):
                g = run["after"][k] - run["before"][k]
            elif k in run.get("gains", {}):
                g = run["gains"][k]
            else:
                continue
            gains.setdefault(k, []).append(g)
            seeds.setdefault(k, []).append(run.get("seed"))
    n = RECORDED["negclip"]["n"]
    zs, zs_lower = [], []  # held-out zero-shot change per seed; lower beyond its 95% interval?
    for r in recs:
        a, b = r.get("after", {}).get("zeroshot_heldout"), r.get("before", {}).get("zeroshot_heldout")
        if a is not None and b is not None:
            zs.append(a - b)
            se = np.sqrt(a * (1 - a) / (2 * n) + b * (1 - b) / (2 * n))  # zero-shot is scored on 2n images
            zs_lower.append(a - b < -1.96 * se)
    rows = [Row.of(f"{k.replace('_', ' ')} gain, {len(v)} seeds (mean [min, max])", over_seeds(v), n)
            for k, v in gains.items()]
    if zs:
        rows.append(Row.of(f"zero-shot held-out change, {len(zs)} seeds (mean [min, max])", over_seeds(zs), n))
    enough = all(len(v) >= 3 for v in gains.values())
    means = {k: over_seeds(v)[0] for k, v in gains.items()}
    holds = enough and all(m >= 0.20 for k, m in means.items() if k != "word_order") and not any(zs_lower)
    per_seed = "; ".join(f"{k.replace('_', ' ')}: " + ", ".join(f"seed {s} {g:+.2f}" for s, g in zip(seeds[k], v))
                         for k, v in gains.items())
    verdict = ("met in the mean of the seeds (the spread is in the rows)" if holds else
               f"needs >= 3 seeds ({max(len(v) for v in gains.values())} so far)" if not enough else
               "below the bar in the mean of the seeds")
    if zs:
        per_seed += "; zero-shot held-out: " + ", ".join(f"{g:+.3f}" for g in zs)
    why = ("Hard negatives (the caption with attributes or relations swapped) make the text tower read order. "
           f"Bar: mean over >= 3 world seeds >= +20 points for attribute and relation swaps, zero-shot not lower "
           f"(beyond its 95% interval, {2 * n} images); {verdict}. Per seed: {per_seed}.")
    head = "; ".join(f"{k.replace('_', ' ')} {means[k]:+.3f} (seeds {', '.join(f'{g:+.2f}' for g in v)})"
                     for k, v in gains.items())
    return Result(rows, bool(holds), why, None, headline=head, source=source)
