"""SAM's claim: an ambiguous point needs three masks."""

from __future__ import annotations

import numpy as np

from mmfm.course.claims.base import RECORDED, Context, Result, Row
from mmfm.course.stats import bootstrap, fmt, paired
from mmfm.vision.plot import bar_plot

SAM_ROWS = (("single", "single output"), ("best3", "best of 3 (predicted IoU)"), ("oracle3", "oracle of 3"))


def sam_ambiguity(ctx: Context) -> Result:
    from mmfm.eval.sam_world import ambiguity_world

    # the SAM trained on part / whole scenes (its weights README says how); the default SAM never saw one
    res = ambiguity_world(ctx.sam("sam-world-tiny-parts"), n=ctx.n(70, 280), seed=ctx.seed, examples=4)
    base = ambiguity_world(ctx.sam(), n=ctx.n(70, 280), seed=ctx.seed)["per_point"]["valid"]
    pp = res["per_point"]
    parts = {"valid": "ambiguous points, nearest valid mask", "intended": "ambiguous points, one intended mask",
             "unambiguous": "unambiguous points"}
    rows, groups = [], {}
    for kind, title in parts.items():
        g = {}
        for k, label in SAM_ROWS:
            m = bootstrap(pp[kind][k])
            rows.append(Row.of(f"{title}: {label}", m, len(pp[kind][k])))
            g[label] = m
        groups[f"{title.replace('ambiguous points, ', '')} (n={len(pp[kind]['single'])})"] = g
    gain = paired(pp["valid"]["best3"], pp["valid"]["single"])
    rows.append(Row.of("ambiguous points: best of 3 - single (nearest valid mask)", gain, len(pp["valid"]["single"])))
    rows.append(Row.of("ambiguous points: share of their valid masks one of the 3 outputs finds (IoU >= 0.75)",
                       bootstrap(pp["valid"]["covered"]), len(pp["valid"]["covered"])))
    rows.append(Row.of("sam-world-tiny (no part / whole scenes in training): best of 3 - single",
                       paired(base["best3"], base["single"]), len(base["single"])))
    rows.append(Row.of("sam-world-tiny: share of valid masks its 3 outputs find", bootstrap(base["covered"]),
                       len(base["covered"])))
    abl = RECORDED.get("sam_single_output")
    if abl:  # the paper's ablation: a SAM trained with one output for every prompt (a recorded run)
        rows.append(Row(f"recorded: {abl['name']}, ambiguous points, its one output", abl["miou_valid"], n=abl["n"]))
    mean = {k: float(np.mean(pp["valid"][k])) for k, _ in SAM_ROWS}
    holds = gain[0] >= 0.10 and mean["oracle3"] >= max(mean["best3"], mean["single"])
    fig = ctx.figure("sam_ambiguity.png", bar_plot(groups, ylim=(0, 1), ylabel="mIoU",
                                                   title="SAM on points that mean a part or a whole"))
    ctx.figure("sam_ambiguity_examples.png", _sam_sheet(res.get("examples", [])))
    why = (f"A point on a snowman's head means the head or the snowman. Best of 3 minus single: {gain[0]:+.3f} "
           "(bar +0.10). " + ("It holds: the single output picks one of the valid masks about as often as not, "
                              "the 3 outputs cover part and whole and the predicted IoU ranks them. It takes "
                              "training on scenes where a point is ambiguous, and 3 outputs that all learn (the "
                              "default SAM, trained without such scenes, gains nothing from best of 3)."
                              if holds else
                              "It does not hold on this model: its single-mask output already returns one valid "
                              "mask for most ambiguous points and its 3 outputs rarely differ (see the share of "
                              "valid masks they find), so ranking them adds little. bench/RESULTS.md, 'SAM "
                              "ambiguity', has the training runs made to show it (part / whole scenes, the paper's "
                              "one-output ablation)."))
    extra = {k: v for k, v in res.items() if k not in ("per_point", "examples")}
    head = (f"ambiguous points: single {mean['single']:.3f}, best of 3 {mean['best3']:.3f}, "
            f"oracle {mean['oracle3']:.3f} (best of 3 - single {fmt(gain)})")
    return Result(rows, bool(holds), why, fig, extra=extra, headline=head)


def _sam_sheet(examples):
    from mmfm.vision.draw import grid, overlay

    tiles, caps = [], []
    for ex in examples:
        tiles.append(overlay(ex["image"], masks=ex["levels"], points=[ex["point"]], scale=3))
        caps.append(f"{len(ex['levels'])} valid masks")
        tiles.append(overlay(ex["image"], masks=ex["single"][None], points=[ex["point"]], scale=3))
        caps.append("single output")
        for k in range(3):
            tiles.append(overlay(ex["image"], masks=ex["outputs"][k][None], points=[ex["point"]], scale=3))
            caps.append(f"output {k + 1}: pred. IoU {ex['predicted_iou'][k]:.2f}")
    if not tiles:
        from PIL import Image

        return Image.new("RGB", (64, 64))
    return grid(tiles, cols=5, captions=caps)
