"""LLaVA answers questions; Molmo points when it counts (both on the shipped world LLaVA)."""

from __future__ import annotations

from mmfm.course.claims.base import LLAVA_N, Context, Result, Row
from mmfm.course.stats import wilson
from mmfm.vision.plot import bar_plot


def llava_vqa(ctx: Context) -> Result:
    ev = ctx.llava_eval()
    n = ctx.n(LLAVA_N[0], LLAVA_N[1])
    chance = {"existence": 0.5, "color": 1 / 8, "shape": 1 / 7}
    rows, holds = [], True
    for kind, acc in ev["vqa"].items():
        if kind == "overall":
            continue
        m = wilson(acc, n)
        rows.append(Row.of(kind, m, n))
        if kind in chance:
            holds &= m[1] > chance[kind]
    fig = ctx.figure("llava_vqa.png", bar_plot({r.name: {"accuracy": (r.value, r.low, r.high)} for r in rows},
                                               ylim=(0, 1), title="world LLaVA: accuracy by question type"))
    why = ("Visual instruction tuning on world Q&A: colour, shape and existence are answered well above chance; "
           "counting and relations are where 16 visual tokens of a 64-pixel image run out.")
    return Result(rows, bool(holds), why, fig, headline=", ".join(f"{r.name} {r.value:.2f}" for r in rows))


def molmo_pointing(ctx: Context) -> Result:
    ev = ctx.llava_eval()
    c = ev["counting"]
    rows = [Row("pointing F1 (point at every X)", round(ev["pointing"]["f1"], 4)),
            Row("points F1 inside point-then-count", round(c["pointing"]["points_f1"], 4))]
    groups = {}
    for key in sorted(set(c["direct"]["by_true_count"]) | set(c["pointing"]["by_true_count"])):
        g = {}
        for mode in ("direct", "pointing"):
            d = c[mode]["by_true_count"].get(key)
            if d:
                m = wilson(d["exact"], d["n"])
                label = "point then count" if mode == "pointing" else "direct answer"
                rows.append(Row.of(f"{key} objects: {label}", m, d["n"]))
                g[label] = m
        groups[f"{key} objects"] = g
    many = groups.get("4+ objects", {})
    holds = (ev["pointing"]["f1"] >= 0.7 and "point then count" in many and "direct answer" in many
             and many["point then count"][0] > many["direct answer"][0])
    fig = ctx.figure("molmo_counting.png", bar_plot(groups, ylim=(0, 1), ylabel="exact count",
                                                    title="counting: direct answer vs pointing first"))
    why = (f"Counting by pointing needs points good enough to count with; this world LLaVA points with F1 "
           f"{ev['pointing']['f1']:.2f} (bar 0.7). " + ("It holds." if holds else
           "It sees 16 pooled visual tokens of a 64-pixel image, whose cells are too coarse to point with "
           "(a point at the right token's centre lands in the object 63% of the time; with 64 tokens 96%), "
           "and its LM has not learned to write a token's coordinates: it writes the same ones whatever the "
           "image. 550 pointing-heavy steps on 64 tokens left F1 near 0.23 (bench/RESULTS.md, session 22); "
           "training the tower too, giving the tokens their coordinates, or training the whole LM for 600 "
           "steps reached at most 0.34 on test scenes (session 30). The LM reads a token's place from its "
           "position in the sequence: trained on pointing it learns y (rows of consecutive tokens) and, "
           "with the tokens given column by column, x, the other axis staying at chance; 1,200 such steps "
           "gave 0.41 (session 31). Molmo's image layout (a column token after each row of image tokens, "
           "`--image-layout`) gives it the column too: with every LM weight trained (`--train-lm`), 1,500 "
           "pointing steps reached F1 0.73 on test scenes in one run (session 32); that model is not "
           "shipped yet."))
    head = f"pointing F1 {ev['pointing']['f1']:.2f}; 4+ objects: " + (", ".join(
        f"{k} {v[0]:.2f}" for k, v in many.items()) or "none among these scenes")
    return Result(rows, bool(holds), why, fig, headline=head)
