"""LLaVA answers questions (the shipped world LLaVA); Molmo points when it counts (the shipped world
Molmo)."""

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
    ev = ctx.molmo_eval()
    f1, c, crowd = ev["pointing"]["f1"], ev["counting"], ev["crowded"]
    rows = [Row("pointing F1 (point at every X)", round(f1, 4)),
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
    n = crowd["n"]
    direct, pointed = wilson(crowd["direct"]["exact"], n), wilson(crowd["pointing"]["exact"], n)
    rows += [Row.of("crowded scenes (4+ of the subject): direct answer", direct, n),
             Row.of("crowded scenes (4+ of the subject): point then count", pointed, n)]
    groups["4+ objects, crowded scenes"] = {"direct answer": direct, "point then count": pointed}
    holds = f1 >= 0.7 and n > 0 and pointed[0] > direct[0]
    fig = ctx.figure("molmo_counting.png", bar_plot(groups, ylim=(0, 1), ylabel="exact count",
                                                    title="counting: direct answer vs pointing first"))
    separate = pointed[1] > direct[2] or direct[1] > pointed[2]
    why = (f"Counting by pointing needs points good enough to count with: the world Molmo points with F1 "
           f"{f1:.2f} (bar 0.7) and on {n} crowded scenes counts {pointed[0]:.2f} by pointing against "
           f"{direct[0]:.2f} directly ({'the intervals separate' if separate else 'the intervals overlap'}). "
           "The world LLaVA it starts from points with F1 near 0.25: its LM reads a token's place only from its "
           "position in the sequence. Molmo's image layout (a column token after each row of image tokens) "
           "and training every LM weight on pointing give it both coordinates (bench/RESULTS.md, sessions "
           "22-33).")
    head = (f"pointing F1 {f1:.2f}; 4+ objects (n={n}): point then count {pointed[0]:.2f}, "
            f"direct {direct[0]:.2f}")
    return Result(rows, bool(holds), why, fig, headline=head)
