"""`mmfm course report`: every claim measured, written as one HTML page (plus JSON and PNG figures).

report/index.html  the table (claim, what the lecture says, what was measured, holds or not) and one
                   section per claim: the bar, the numbers with 95% intervals, the figure, why
report/report.json the same data, for scripts and for bench/RESULTS.md
report/figures/    one PNG per claim (matplotlib)
"""

from __future__ import annotations

import html
import json
import math
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from mmfm.course.claims import CLAIMS, Context, run_claim
from mmfm.course.claims.base import SEEDS
from mmfm.errors import ConfigError


def select(only: list[str] | None):
    if not only:
        return list(CLAIMS)
    keys = {c.key: c for c in CLAIMS}
    bad = [k for k in only if k not in keys]
    if bad:
        raise ConfigError(f"unknown claim {', '.join(bad)}; claims: {', '.join(keys)}")
    return [keys[k] for k in only]


def build_report(out, quick: bool = False, only: list[str] | None = None, seed: int = 0,
                 progress: bool = True, echo=print, full: bool = False, seeds=SEEDS,
                 full_scale: float = 1.0) -> dict:
    """Measure the selected claims, write the report folder, return its JSON. `full`: the claims that rest
    on training runs are retrained once per seed in `seeds` (mmfm.course.retrain; hours on 2 cores, resumable)
    instead of read from recorded.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    claims = select(only)
    if full and (not seeds or not 0 < full_scale <= 1):
        raise ConfigError("--full needs at least one seed and a scale in (0, 1]")
    ctx = Context(out=out, quick=quick, seed=seed, progress=progress, full=full, seeds=tuple(seeds),
                  full_scale=full_scale)
    t0 = time.perf_counter()
    results = []
    for i, claim in enumerate(claims, 1):
        echo(f"[{i}/{len(claims)}] {claim.title} ...")
        r = run_claim(claim, ctx)
        verdict = {True: "holds", False: "does not hold", None: "not measured"}[r["holds"]]
        echo(f"      {verdict} ({r['seconds']:.0f} s)")
        results.append(r)
    setting = "quick" if quick else "default"
    report = {"setting": setting + (", full" if full else ""), "seed": seed,
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "host": f"{platform.machine()}, {platform.processor() or platform.system()}",
              "seconds": round(time.perf_counter() - t0, 1), "claims": results}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_jsonable))
    (out / "index.html").write_text(render_html(report))
    return report


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON: {type(x).__name__}")


def _interval(row: dict) -> str:
    v, lo, hi = row["value"], row.get("low"), row.get("high")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi == v:
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown_table(report: dict) -> str:
    """The report's table as Markdown, to copy into bench/RESULTS.md."""
    lines = ["| claim | measured (95% interval) | holds | source |", "| --- | --- | --- | --- |"]
    for c in report["claims"]:
        measured = c.get("headline") or "-"
        verdict = {True: "yes", False: "**no**", None: "not measured"}[c["holds"]]
        src = "this run" if c["source"] == "measured in this run" else c["source"].split(":")[0]
        lines.append(f"| {c['title']} | {measured} | {verdict} | {src} |")
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}.yes{color:#0a7d27;font-weight:600}.no{color:#b3261e;font-weight:600}
.na{color:#777}section{border-top:1px solid #ddd;margin-top:2em}img{max-width:100%}.src{color:#666;font-size:90%}"""


def render_html(report: dict) -> str:
    e = html.escape
    verdict = {True: ("yes", "holds"), False: ("no", "does not hold"), None: ("na", "not measured")}
    rows = []
    for c in report["claims"]:
        cls, word = verdict[c["holds"]]
        rows.append(f"<tr><td><a href='#{e(c['key'])}'>{e(c['title'])}</a></td><td>{e(c['statement'])}</td>"
                    f"<td>{e(c.get('headline') or '-')}</td>"
                    f"<td class='{cls}'>{word}</td></tr>")
    sections = []
    for c in report["claims"]:
        cls, word = verdict[c["holds"]]
        table = "".join(f"<tr><td>{e(r['name'])}</td><td>{e(_interval(r))}</td><td>{r.get('n') or ''}</td></tr>"
                        for r in c["rows"])
        fig = f"<img src='{e(c['figure'])}' alt='{e(c['title'])}'>" if c.get("figure") else ""
        sections.append(
            f"<section id='{e(c['key'])}'><h2>{e(c['title'])} <span class='{cls}'>({word})</span></h2>"
            f"<p><b>The lecture:</b> {e(c['statement'])}</p><p><b>Judged by:</b> {e(c['bar'])}</p>"
            f"<table><tr><th>measurement</th><th>value [95% interval]</th><th>n</th></tr>{table}</table>"
            f"{fig}<p>{e(c['why'])}</p><p class='src'>{e(c['source'])}; {c['seconds']} s</p></section>")
    held = sum(c["holds"] is True for c in report["claims"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mmfm: the course's claims</title>"
            f"<style>{_CSS}</style></head><body><h1>The course's claims, measured</h1>"
            f"<p>{held} of {len(report['claims'])} hold. Setting: {e(report['setting'])}, seed {report['seed']}, "
            f"{e(report['date'])}, {e(report['host'])}, {report['seconds']} s. Intervals: 95% bootstrap over the "
            f"evaluated items, Wilson for proportions, min-max over seeds.</p>"
            f"<table><tr><th>claim</th><th>the lecture</th><th>measured</th><th>holds</th></tr>{''.join(rows)}</table>"
            f"{''.join(sections)}</body></html>")
