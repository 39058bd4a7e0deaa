"""LLaVA / Molmo on new world scenes: VQA accuracy by question type, counting answered directly vs by
pointing first (exact, within 1, by true count), and pointing precision / recall / F1.

Splits: "test" = new scenes of the compositions seen in training, "heldout" = scenes that contain at
least one color x shape composition never seen in training (images or text).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from mmfm.data.llava_world import (
    CROWDED,
    QA_KINDS,
    count_fact,
    count_subject,
    direct_count_question,
    point_question,
    pointing_count_question,
)
from mmfm.errors import ConfigError, InvalidText
from mmfm.eval.vqa import parse_count, point_scores, vqa_accuracy
from mmfm.text.pointing import parse_points
from mmfm.vision.draw import grid
from mmfm.world import World
from mmfm.world.annotate import interior_points
from mmfm.world.facts import select


def _world(model, seed: int, **kw) -> World:
    """The world drawn at the size the model reads (a multi-crop Molmo reads it at 2x or more)."""
    return World(seed=seed, size=getattr(model, "input_size", 64), **kw)


def _answers(model, images, questions, batch: int, max_new_tokens: int, progress=None) -> list[str]:
    ph = model.config.image_token
    out = []
    for i in range(0, len(questions), batch):
        qs = [f"{ph}\n{q}" for q in questions[i : i + batch]]
        ims = [[im] for im in images[i : i + batch]]
        out += model.generate(qs, ims, max_new_tokens=max_new_tokens)
        if progress is not None:
            progress.update(len(qs))
    return out


def _items(world: World, split: str, n: int, offset: int = 100_000):
    """Up to n QA items per question type, plus the scenes' point queries, from new scenes."""
    by_kind: dict[str, list] = defaultdict(list)
    points, counts = [], []
    i = offset
    while min(len(by_kind[k]) for k in QA_KINDS) < n and i < offset + 50 * n:
        s = world.sample(split, i)
        i += 1
        for q in s.ann.qa:
            if len(by_kind[q.kind]) < n:
                by_kind[q.kind].append((s.rendered, q))
                if q.kind == "count":
                    counts.append((s.rendered, q))
        if s.ann.points and len(points) < n:
            points.append((s.rendered, s.ann.points[int(i) % len(s.ann.points)]))
    return by_kind, points, counts


def evaluate_llava_world(model, n: int = 100, seed: int = 0, out=None, splits=("test", "heldout"),
                         batch: int = 16, progress: bool = True, grounding: bool = True, crowded: int = 0,
                         count_objects: int = 0, count_n: int = 20, apart: bool = False) -> dict:
    """grounding=False: the VQA accuracies only, without counting and pointing (their answers run to 160
    tokens: most of the time). crowded=k: also count on n scenes with at least k of the subject
    (evaluate_counting), where few of the n random ones have many. count_objects=m: also count on scenes
    of up to m objects, count_n questions for each true count 0..m (counting_by_objects; its figure is
    out/counting.png, of the first split). apart: every scene drawn with objects of one colour apart
    (World(apart=True)), so each count can be read by eye."""
    from tqdm.auto import tqdm

    world = _world(model, seed, apart=apart)
    report: dict = {"n_per_type": n, "apart": apart}
    examples, figures = [], []
    for split in splits:
        by_kind, points, counts = _items(world, split, n)
        if not grounding:
            points, counts = [], []
        total = sum(len(v) for v in by_kind.values()) + len(points) + 2 * len(counts)
        bar = tqdm(total=total, desc=f"eval LLaVA ({split})", disable=not progress, dynamic_ncols=True)
        vqa, ci95 = {}, {}
        for kind in QA_KINDS:
            items = by_kind[kind]
            preds = _answers(model, [r.image for r, _ in items], [q.question for _, q in items], batch, 8, bar)
            acc = np.array([vqa_accuracy(p, [q.answer]) for p, (_, q) in zip(preds, items)], dtype=float)
            vqa[kind] = float(acc.mean())
            # half-width of a 95% interval (normal approximation): at n=200 an accuracy near 0.8 is +-0.055,
            # the size of the moves seen between world seeds, so a goal is judged on n >= 500
            ci95[kind] = float(1.96 * acc.std() / np.sqrt(len(acc)))
        vqa["overall"] = float(np.mean([vqa[k] for k in QA_KINDS]))
        report[split] = {"vqa": vqa, "vqa_ci95": ci95}
        if grounding:
            report[split]["counting"] = _counting(model, counts, batch, bar)
            report[split]["pointing"], answers = _pointing(model, points, batch, bar)
            examples += [(r, point_question(pq.query), a) for (r, pq), a in list(zip(points, answers))[:8]]
        bar.close()
        if crowded:
            report[split]["crowded"] = evaluate_counting(model, n, seed, split, crowded, batch, progress=progress,
                                                         apart=apart)
        if count_objects:
            report[split]["by_objects"] = counting_by_objects(model, count_n, seed, split, count_objects, batch,
                                                              progress=progress, apart=apart)
            figures.append(counting_figure(report[split]["by_objects"]))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        if examples:
            _sheet(examples[:8]).save(out / "points.png")
        if figures:
            figures[0].save(out / "counting.png")
    return report


def _pointing(model, points, batch: int, bar=None) -> tuple[dict, list[str]]:
    """Point at every X: precision / recall / F1 of the points against the objects' masks, and the answers."""
    answers = _answers(model, [r.image for r, _ in points], [point_question(pq.query) for _, pq in points],
                       batch, 160, bar)
    scores = []
    for a, (r, pq) in zip(answers, points):
        allp = interior_points(r)
        want = {tuple(p) for p in pq.points}
        idx = [i for i in range(len(allp)) if tuple(allp[i]) in want]
        scores.append(_score_points(a, r, r.masks[idx] if idx else np.zeros((0,) + r.masks.shape[1:], bool)))
    pointing = {m: float(np.mean([s[m] for s in scores])) for m in ("precision", "recall", "f1")}
    pointing["unparsable"] = int(sum(s.get("unparsable", 0) for s in scores))
    return pointing, answers


def _counting(model, counts, batch: int, bar=None, point_tokens: int = 160) -> dict:
    """The same scenes and subjects asked directly ("How many ...?") and asked to point first."""
    return _count_summary(*_count_answers(model, counts, batch, bar, point_tokens))


def _count_answers(model, counts, batch: int, bar, point_tokens: int) -> tuple[list, list, list, list]:
    """(direct answers, pointing answers, true counts, the pointing answers' point scores: precision, recall,
    F1 and the number of points written) of (rendered, question) pairs."""
    subjects, truths, gts = [], [], []
    for r, q in counts:
        c, s, k = count_fact(q)
        subjects.append(count_subject(c, s))
        truths.append(k)
        gts.append((r, c, s))
    images = [r.image for r, _ in counts]
    direct = _answers(model, images, [direct_count_question(s) for s in subjects], batch, 8, bar)
    pointed = _answers(model, images, [pointing_count_question(s) for s in subjects], batch, point_tokens, bar)
    scores = [_point_f1(a, r, c, s) for a, (r, c, s) in zip(pointed, gts)]
    return direct, pointed, truths, scores


def _count_summary(direct: list, pointed: list, truths: list, scores: list) -> dict:
    """Exact / within-one counts of both answers; for the pointing answers also their points' precision,
    recall and F1 against the subject's masks, and how many points they write for how many objects (a
    count by pointing can come out right from points that miss: the number written is what it reads)."""
    counting = {"direct": _count_scores(direct, truths), "pointing": _count_scores(pointed, truths)}
    for m in ("f1", "precision", "recall"):
        counting["pointing"][f"points_{m}"] = float(np.mean([x[m] for x in scores]))
    counting["pointing"]["points_written"] = float(np.mean([x["points"] for x in scores]))
    counting["pointing"]["objects"] = float(np.mean(truths))
    return counting


def evaluate_counting(model, n: int = 100, seed: int = 0, split: str = "test", min_count: int = 1,
                      batch: int = 16, offset: int = 100_000, progress: bool = True, apart: bool = False) -> dict:
    """Counting alone on n count questions of new scenes whose answer is at least `min_count` (4: the
    crowded scenes where Molmo's point-then-count should pay), direct vs by pointing, as in
    evaluate_llava_world's "counting". apart: scenes whose objects of one colour never touch."""
    from tqdm.auto import tqdm

    counts = []
    for r, q, k in _count_questions(_world(model, seed, apart=apart), split, offset, offset + 200 * n):
        if len(counts) >= n:
            break
        if k >= min_count:
            counts.append((r, q))
    with tqdm(total=2 * len(counts), desc=f"counting ({split}, >= {min_count})", disable=not progress,
              dynamic_ncols=True) as bar:
        return {"n": len(counts), "min_count": min_count, "apart": apart, **_counting(model, counts, batch, bar)}


def _count_questions(world: World, split: str, start: int, stop: int):
    """(rendered scene, count question, true count) of scenes start..stop-1 of a split, in order."""
    for i in range(start, stop):
        s = world.sample(split, i)
        for q in s.ann.qa:
            if q.kind == "count":
                yield s.rendered, q, count_fact(q)[2]


def counting_by_objects(model, n: int = 20, seed: int = 0, split: str = "test", max_objects: int = 10,
                        batch: int = 16, offset: int = 100_000, progress: bool = True,
                        apart: bool = False) -> dict:
    """Counting on scenes of up to `max_objects` objects (1-12; the world's training scenes have at most 5):
    n count questions for each true count 0..max_objects, direct vs by pointing first, with the pointing
    answers' F1. This is the breakdown by number of objects the Molmo paper draws, where pointing should
    pay as the count grows, and it shows whether either answer carries past the counts seen in training.
    Counts the scenes cannot reach within the search get n=0 rows."""
    from tqdm.auto import tqdm

    if not 1 <= max_objects <= 12:
        raise ConfigError(f"counting by objects needs 1 <= max_objects <= 12, got {max_objects}")
    world = _world(model, seed, max_objects=max_objects, apart=apart)
    items: dict[int, list] = {k: [] for k in range(max_objects + 1)}
    for r, q, k in _count_questions(world, split, offset, offset + 400 * n * max_objects):
        if min(len(v) for v in items.values()) >= n:
            break
        if k in items and len(items[k]) < n:
            items[k].append((r, q))
    # a pointing answer spends ~13 tokens a point (x_i="..." y_i="..."), so the budget grows with the count
    tokens = 48 + 16 * max_objects
    flat = [it for its in items.values() for it in its]  # asked together: full batches across counts
    with tqdm(total=2 * len(flat), desc=f"counting by objects ({split})", disable=not progress,
              dynamic_ncols=True) as bar:
        answers = _count_answers(model, flat, batch, bar, tokens)
    rows, start = {}, 0
    for k, its in items.items():
        if not its:
            rows[str(k)] = {"n": 0}
            continue
        c = _count_summary(*(a[start : start + len(its)] for a in answers))
        start += len(its)
        rows[str(k)] = {"n": len(its), "direct": c["direct"]["exact"], "pointing": c["pointing"]["exact"],
                        "direct_within_1": c["direct"]["within_1"], "pointing_within_1": c["pointing"]["within_1"],
                        "points_f1": c["pointing"]["points_f1"]}
    return {"max_objects": max_objects, "n_per_count": n, "split": split, "by_count": rows,
            "ranges": {f"{lo}-{hi}": _pool(rows, lo, hi) for lo, hi in _ranges(max_objects)}}


def _ranges(m: int) -> list[tuple[int, int]]:
    """0-3 (most counts of the world's default scenes), 4-5 (their crowded ones), 6+ (past them)."""
    return [(lo, min(hi, m)) for lo, hi in ((0, CROWDED - 1), (CROWDED, 5), (6, m)) if lo <= m]


def _pool(rows: dict, lo: int, hi: int) -> dict:
    """Exact accuracies of rows lo..hi pooled over their questions."""
    ks = [str(k) for k in range(lo, hi + 1) if rows.get(str(k), {}).get("n")]
    n = sum(rows[k]["n"] for k in ks)
    return {"n": n, **{m: (sum(rows[k][m] * rows[k]["n"] for k in ks) / n if n else float("nan"))
                       for m in ("direct", "pointing", "points_f1")}}


def counting_figure(by_objects: dict):
    """Exact counting accuracy against the true count, direct vs by pointing (a PIL image)."""
    from mmfm.vision.plot import line_plot

    rows = {int(k): v for k, v in by_objects["by_count"].items() if v["n"]}
    series = {mode: [(k, v[key]) for k, v in sorted(rows.items())]
              for mode, key in (("direct answer", "direct"), ("point, then count", "pointing"))}
    series["points F1"] = [(k, v["points_f1"]) for k, v in sorted(rows.items()) if k > 0]
    return line_plot(series, title=f"Counting on scenes of up to {by_objects['max_objects']} objects "
                     f"({by_objects['split']}, n={by_objects['n_per_count']} a count)",
                     xlabel="true count", ylabel="exact / F1", markers=True)


def _score_points(answer: str, r, masks) -> dict:
    try:
        pts = parse_points(answer, r.size, r.size)
    except InvalidText:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "unparsable": 1, "points": 0}
    return {**point_scores(pts, masks), "points": len(pts)}


def _point_f1(answer: str, r, c, s) -> dict:
    return _score_points(answer, r, r.masks[select(r, c, s)])


def _count_scores(answers: list[str], truths: list[int]) -> dict:
    parsed = [parse_count(a) for a in answers]
    ok = np.array([p is not None and p == t for p, t in zip(parsed, truths)])
    near = np.array([p is not None and abs(p - t) <= 1 for p, t in zip(parsed, truths)])
    by_n: dict[str, dict] = {}
    for t in sorted(set(truths)):
        sel = np.array([x == t for x in truths])
        key = str(t) if t < 4 else "4+"
        d = by_n.setdefault(key, {"n": 0, "exact": 0.0})
        d["n"] += int(sel.sum())
        d["exact"] += float(ok[sel].sum())
    for d in by_n.values():
        d["exact"] = d["exact"] / max(d["n"], 1)
    return {"exact": float(ok.mean()), "within_1": float(near.mean()), "unparsed": int(sum(p is None for p in parsed)),
            "by_true_count": by_n}


def _sheet(examples):
    from PIL import Image, ImageDraw


    tiles, caps = [], []
    for r, q, a in examples:
        im = r.pil().resize((r.size * 3, r.size * 3), Image.NEAREST)
        d = ImageDraw.Draw(im)
        try:
            pts = parse_points(a, r.size, r.size)
        except Exception:  # noqa: BLE001 - a sheet shows whatever parses
            pts = []
        for x, y in pts:
            d.ellipse((3 * x - 4, 3 * y - 4, 3 * x + 4, 3 * y + 4), outline=(255, 0, 255), width=2)
        tiles.append(im)
        caps.append(q[:40])
    return grid(tiles, cols=4, captions=caps)


def format_report(report: dict) -> str:
    lines = []
    for split in ("test", "heldout"):
        if split not in report:
            continue
        r = report[split]
        v = r["vqa"]
        ci = r.get("vqa_ci95", {})
        lines.append(f"{split}: VQA " + " ".join(f"{k} {v[k]:.3f}" + (f"+-{ci[k]:.3f}" if k in ci else "")
                                                 for k in (*QA_KINDS, "overall")))
        if "counting" not in r:  # grounding=False
            continue
        for mode in ("direct", "pointing"):
            c = r["counting"][mode]
            by = " ".join(f"n={k}:{d['exact']:.2f}" for k, d in c["by_true_count"].items())
            lines.append(f"  count {mode:8s} exact {c['exact']:.3f} within-1 {c['within_1']:.3f} ({by})")
        p = r["pointing"]
        lines.append(f"  pointing P {p['precision']:.3f} R {p['recall']:.3f} F1 {p['f1']:.3f}")
        if "crowded" in r:
            c = r["crowded"]
            p = c["pointing"]
            lines.append(f"  crowded ({c['min_count']}+ of the subject, n={c['n']}"
                         f"{', one colour apart' if c.get('apart') else ''}): exact direct "
                         f"{c['direct']['exact']:.3f}, by pointing {p['exact']:.3f} (its points P "
                         f"{p['points_precision']:.2f} R {p['points_recall']:.2f}: {p['points_written']:.2f} "
                         f"written for {p['objects']:.2f} objects)")
        if "by_objects" in r:
            b = r["by_objects"]
            lines.append(f"  counting on scenes of up to {b['max_objects']} objects (exact direct / by pointing):")
            lines.append("    " + " ".join(f"{k}:{v['direct']:.2f}/{v['pointing']:.2f}"
                                          for k, v in b["by_count"].items() if v["n"]))
            lines.append("    " + ", ".join(f"counts {k} (n={v['n']}) {v['direct']:.3f} / {v['pointing']:.3f}"
                                           for k, v in b["ranges"].items() if v["n"]))
    return "\n".join(lines)


__all__ = ["evaluate_llava_world", "evaluate_counting", "counting_by_objects", "counting_figure", "format_report"]
