"""The visual rationale of a VisProg run: one self-contained HTML file (images embedded as PNG data
URLs) with each step's line, its inputs and its output, regions drawn on their image, and the error
of a failed step in red."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image, ImageDraw

THUMB = 320


def _img_tag(image: Image.Image, title: str = "") -> str:
    im = image.convert("RGB")
    if max(im.size) > THUMB:
        im = im.copy()
        im.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img src="data:image/png;base64,{data}" title="{html.escape(title)}">'


def _draw_regions(image: Image.Image, regions: list) -> Image.Image:
    import numpy as np

    out = image.convert("RGB").copy()
    arr = np.asarray(out).copy()
    for r in regions:
        if getattr(r, "mask", None) is not None and r.mask.shape == arr.shape[:2]:
            arr[r.mask] = (0.5 * arr[r.mask] + 0.5 * np.array([40, 120, 255])).astype(np.uint8)
    out = Image.fromarray(arr)
    d = ImageDraw.Draw(out)
    w = max(2, min(out.size) // 120)
    for r in regions:
        d.rectangle(r.box, outline=(255, 40, 40), width=w)
        if r.label:
            d.text((r.box[0] + 3, r.box[1] + 2), r.label, fill=(255, 255, 0))
    return out


def _value(v, image: Image.Image | None) -> str:
    if isinstance(v, Image.Image):
        return _img_tag(v)
    if isinstance(v, list) and v and all(hasattr(x, "box") for x in v):
        text = html.escape(", ".join(f"{x.label or 'region'} {tuple(int(c) for c in x.box)}" for x in v[:8]))
        more = f" (+{len(v) - 8} more)" if len(v) > 8 else ""
        pic = _img_tag(_draw_regions(image, v)) if image is not None else ""
        return f"{pic}<div class=v>{len(v)} region(s): {text}{more}</div>"
    if isinstance(v, list) and not v:
        return "<div class=v>[] (nothing found)</div>"
    return f"<div class=v>{html.escape(repr(v))}</div>"


def render_html(run, title: str = "VisProg run") -> str:
    """run: an interpreter RunResult -> the HTML text."""
    rows = []
    for i, t in enumerate(run.trace, 1):
        image = next((v for v in t.inputs.values() if isinstance(v, Image.Image)), None)
        ins = "".join(f"<div class=arg><b>{html.escape(k)}</b> {_value(v, image)}</div>" for k, v in t.inputs.items()
                      if k != "env")
        out = (f"<div class=err>{html.escape(t.error)}</div>" if t.error is not None
               else f"<b>{html.escape(t.step.target)}</b> = {_value(t.output, image)}")
        rows.append(f"<tr><td>{i}</td><td><code>{html.escape(t.step.source)}</code><div class=t>{t.module}, "
                    f"{t.seconds:.2f} s</div></td><td>{ins}</td><td>{out}</td></tr>")
    not_run = run.program.steps[len(run.trace):]
    for s in not_run:
        rows.append(
            f"<tr class=skip><td></td><td><code>{html.escape(s.source)}</code></td><td colspan=2>not run</td></tr>"
        )
    if run.ok:
        verdict = f"<h2>Result</h2>{_value(run.result, None)}"
    else:
        verdict = f"<h2>Failed</h2><div class=err>{html.escape(str(run.error))}</div>"
    program = html.escape(run.program.source.strip())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}} td{{border:1px solid #ccc;padding:6px;
vertical-align:top}} img{{max-width:{THUMB}px;display:block}} .err{{color:#b00;font-weight:bold}} .t{{color:#777;
font-size:smaller}} .skip{{color:#aaa}} .v{{font-family:monospace;max-width:40em;overflow-wrap:anywhere}}
pre{{background:#f4f4f4;padding:8px}}</style></head><body><h1>{html.escape(title)}</h1><pre>{program}</pre>
<table><tr><th>#</th><th>step</th><th>inputs</th><th>output</th></tr>{''.join(rows)}</table>{verdict}</body></html>"""


def write_html(run, path, title: str = "VisProg run") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(run, title), encoding="utf-8")
    return path


__all__ = ["render_html", "write_html"]
