"""`rlkit report RUN_DIR`: PNG plots in RUN_DIR/plots/ and one self-contained RUN_DIR/report.html.

Everything comes from files the run already wrote (metrics.jsonl, alarms.jsonl, samples/*.png), so a report
can be made mid-run, after a crash, or on another machine. Images are embedded, so the page reads offline.
Runs write it themselves at the end too.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from rlkit.errors import UserError
from rlkit.logs import read_rows

# (file, title, [(metric key, label)]): a plot is drawn when any of its keys has values
PLOTS = [
    ("reward.png", "Proxy reward (training) and gold (held-out)",
     [("reward_mean", "proxy reward (train batch)"), ("eval/reward", "proxy reward (probe)")]),
    ("kl.png", "KL", [("kl_ref", "KL to reference"), ("approx_kl", "KL to rollout policy")]),
    ("ratio.png", "Trust region", [("clipfrac", "clip fraction"), ("zero_std_frac", "zero-std groups")]),
    ("uncertainty.png", "Reward uncertainty", [("reward_uncertainty", "mean uncertainty")]),
    ("diversity.png", "Within-group diversity", [("group_diversity", "pixel std within groups")]),
]


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def write_plots(run_dir: Path) -> list[Path]:
    """One PNG per plot of PLOTS that has data; alarms drawn as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    rows, alarms = read_rows(run_dir / "metrics.jsonl"), read_rows(run_dir / "alarms.jsonl")
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    # the gold under its log_as names (e.g. gt_heldout) when the recipe gave any, else the gold total
    log_as = sorted({k for r in rows for k in r if k in _log_as_keys(run_dir)})
    gold_keys = [(k, k) for k in log_as] or [("gold/reward", "gold (held-out)")]
    for name, title, keys in PLOTS:
        lines = [ln for ln in ((label, *_series(rows, key)) for key, label in keys) if ln[1]]
        # gold on its own axis: proxy and gold are different scales
        gold = [ln for ln in ((label, *_series(rows, key)) for key, label in gold_keys) if ln[1]]
        gold = gold if name == "reward.png" else []
        if not lines and not gold:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
        for label, xs, ys in lines:
            ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, markersize=3, label=label)
        handles, labels = ax.get_legend_handles_labels()
        if gold:
            ax2 = ax.twinx()
            for i, (label, xs, ys) in enumerate(gold):
                ax2.plot(xs, ys, marker="s", markersize=3, color=f"C{3 + i}", label=label)
            ax2.set_ylabel("gold")
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        for a in alarms:
            ax.axvline(a["step"], color="red" if a["action"] != "warn" else "orange", alpha=0.5, linestyle="--")
        ax.set_title(title + ("  (dashed: alarms)" if alarms else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(handles, labels, fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / name)
        plt.close(fig)
        written.append(out_dir / name)
    return written


def _log_as_keys(run_dir: Path) -> set[str]:
    from omegaconf import OmegaConf

    if not (run_dir / "config.yaml").is_file():
        return set()
    cfg = OmegaConf.load(run_dir / "config.yaml")
    return {str(s.log_as) for s in OmegaConf.select(cfg, "eval.rewards", default=[]) or [] if s.get("log_as")}


def _img(path: Path, width: int | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    style = f' style="width:{width}px;image-rendering:pixelated"' if width else ""
    return f'<img src="data:image/png;base64,{data}"{style}>'


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir} is not an rlkit run directory (no metrics.jsonl)")
    plots = write_plots(run_dir)
    rows, alarms = read_rows(run_dir / "metrics.jsonl"), read_rows(run_dir / "alarms.jsonl")
    parts = [f"<h1>rlkit run: {html.escape(str(run_dir))}</h1>"]
    steps = [r["step"] for r in rows]
    parts.append(f"<p>{len(rows)} rows, steps {min(steps, default=0)}-{max(steps, default=0)}; "
                 f"{len(alarms)} alarm(s).</p>")
    parts += _exported(run_dir)
    evals = [r for r in rows if "eval/reward" in r]
    if evals:
        cols = ["step", "eval/reward", "gold/reward", "gt_heldout", "probe/drift"]
        cols = [c for c in cols if any(c in r for r in evals)]
        parts.append("<h2>Evaluations (fixed prompts and noise)</h2>" + _table(evals, cols))
    parts.append("<h2>Plots</h2>" + "".join(f"<div>{_img(p)}</div>" for p in plots))
    parts.append("<h2>Alarms</h2>" + (_table(alarms, ["step", "kind", "action", "message"]) if alarms
                                      else "<p>none</p>"))
    grids = sorted((run_dir / "samples").glob("eval_step_*.png")) or sorted((run_dir / "samples").glob("*.png"))
    if grids:
        parts.append("<h2>Images over time</h2><p>each row: source, then samples</p>")
        for g in grids:
            parts.append(f"<div><b>{g.stem}</b><br>{_img(g, width=min(1200, 4 * _png_width(g)))}</div>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>rlkit report</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def _exported(run_dir: Path) -> list[str]:
    """Which weights final/ (and final_last/) hold, from the rlkit_final.json the run wrote beside them."""
    import json

    said = []
    for name in ("final", "final_last"):
        info = run_dir / name / "rlkit_final.json"
        if info.is_file():
            d = json.loads(info.read_text())
            gold = "" if d.get("gold") is None else f", gold {d['gold']:.4f}"
            kind = "the best gold evaluation's" if d.get("weights") == "best_gold" else "the last"
            said.append(f"<code>{name}/</code> holds {kind} weights (step {d.get('step')}{gold})")
    return [f"<p>Exported: {'; '.join(said)}.</p>"] if said else []


def _table(rows: list[dict], cols: list[str]) -> str:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v if v is not None else ""))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png_width(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return im.size[0]
