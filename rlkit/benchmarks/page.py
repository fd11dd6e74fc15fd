"""OUTPUT/page.html: every item as a row, its source and instruction, then each target's edit with the judge's
scores for it; the figures per target above. One offline file (images inline)."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path


def slug(name: str) -> str:
    """A target's or an item's name as a file name (images/TARGET/KEY.png)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "item"


def _img(path: Path, width: int = 160) -> str:
    if not path.is_file():
        return "<i>missing</i>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="width:{width}px;image-rendering:pixelated">'


def _png(tensor) -> bytes:
    import io

    import torch
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((tensor.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _item_scores(benchmark: str, target: str, item, done: dict) -> str:
    if benchmark == "gedit":
        sc, pq = done.get((target, item.key, "SC")), done.get((target, item.key, "PQ"))
        if sc is None or pq is None:
            return "missing"
        return f"SC {min(sc):g} &middot; PQ {min(pq):g} &middot; O {math.sqrt(min(sc) * min(pq)):.2f}"
    got = done.get((target, item.key, item.task))
    return "missing" if got is None else " &middot; ".join(f"{v:g}" for v in got) + f" (mean {sum(got) / 3:.2f})"


def write_page(out: Path, benchmark: str, items, targets, done: dict, result: dict) -> Path:
    from rlkit.core.images import fit_area, resize_to

    head = ["<h1>" + html.escape(f"rlkit eval: {benchmark} ({result['items']} items)") + "</h1>",
            "<p>judge: " + html.escape(f"{result['judge']['model']}, temperature {result['judge']['temperature']}")
            + "; rubric: " + html.escape(str(result["prompts"])) + "</p>", "<table><tr><th>target</th>"]
    summary = {name: r["overall"] for name, r in result["targets"].items()}
    cols = ["SC", "PQ", "O", "n"] if benchmark == "gedit" else ["average", "n"]
    head[-1] += "".join(f"<th>{c}</th>" for c in cols) + "<th>missing</th></tr>"
    for name, overall in summary.items():
        head.append(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{_fmt(overall.get(c))}</td>" for c in cols)
                    + f"<td>{result['targets'][name]['missing']}</td></tr>")
    head.append("</table>")
    rows = ["<table><tr><th>source</th><th>instruction</th>"
            + "".join(f"<th>{html.escape(t.name)}</th>" for t in targets) + "</tr>"]
    resolution = targets[0].cfg.policy.resolution
    for it in items:
        shown = resize_to(it.shown, fit_area(it.shown.size, resolution, 1))  # its own aspect ratio
        source = base64.b64encode(_png(shown)).decode()
        cells = [f'<td><img src="data:image/png;base64,{source}" style="width:160px;image-rendering:pixelated">'
                 f"</td><td>{html.escape(it.instruction)}<br><small>{html.escape(it.key)}</small></td>"]
        for t in targets:
            cells.append(f"<td>{_img(out / 'images' / slug(t.name) / f'{slug(it.key)}.png')}<br><small>"
                         f"{_item_scores(benchmark, t.name, it, done)}</small></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    rows.append("</table>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>rlkit eval</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
            "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top}</style></head><body>"
            + "\n".join(head + rows) + "</body></html>")
    path = out / "page.html"
    path.write_text(page)
    return path
