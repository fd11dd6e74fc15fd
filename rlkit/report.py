"""`rlkit report RUN_DIR`: PNG plots in RUN_DIR/plots/ and one self-contained RUN_DIR/report.html.

Everything comes from files the run already wrote (metrics.jsonl, alarms.jsonl, samples/*.png), so a report
can be made mid-run, after a crash, or on another machine. Images are embedded, so the page reads offline.
Runs write it themselves at the end too.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from PIL import Image

from rlkit.core.errors import OutputError, UserError
from rlkit.logs import read_rows
from rlkit.summary import read_json, saved_recipe

# (file, title, [(metric key, label)], [(threshold key in the recipe's stability section, label)]): a plot is
# drawn when any of its keys has values; each threshold is drawn as the line an alarm fires beyond
PLOTS = [
    ("reward.png", "Proxy reward (the training reward)",
     [("reward_mean", "training batches"), ("eval/reward", "probe: fixed prompts and noise")], []),
    ("kl.png", "KL", [("kl_ref", "KL to reference"), ("approx_kl", "KL to rollout policy")],
     [("kl_blowup.max_kl_ref", "kl_blowup: max_kl_ref"), ("kl_blowup.max_approx_kl", "kl_blowup: max_approx_kl")]),
    ("ratio.png", "Trust region", [("clipfrac", "clip fraction"), ("zero_std_frac", "zero-std groups")],
     [("ratio_blowup.max_clipfrac", "ratio_blowup: max_clipfrac")]),
    ("uncertainty.png", "Reward uncertainty", [("reward_uncertainty", "mean uncertainty")], []),
    ("diversity.png", "Within-group diversity", [("group_diversity", "pixel std within groups")], []),
    ("benchmark.png", "Benchmark (eval.benchmark, judged)",
     [("bench/gedit_O", "GEdit O"), ("bench/gedit_SC", "GEdit SC"), ("bench/gedit_PQ", "GEdit PQ"),
      ("bench/imgedit_average", "ImgEdit average")], []),
]


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _stability(run_dir: Path) -> dict:
    found = saved_recipe(run_dir).get("stability")
    return found if isinstance(found, dict) else {}


def _threshold(stability: dict, dotted: str):
    node = stability
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, (int, float)) else None


def write_plots(run_dir: Path) -> list[Path]:
    """One PNG per plot that has data: the proxy reward, the gold in a panel of its own (its scale is not the
    proxy's), the guard's signals with the thresholds their alarms fire beyond; alarms as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    rows, alarms = read_rows(run_dir / "metrics.jsonl", numbers=True), read_rows(run_dir / "alarms.jsonl")
    stability = _stability(run_dir)
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    # the gold under its log_as names (e.g. gt_heldout) when the recipe gave any, else the gold total
    named = _log_as_keys(run_dir)
    log_as = sorted({k for r in rows for k in r if k in named})
    gold_plot = ("gold.png", "Gold (held-out, never trained on)",
                 [(k, k) for k in log_as] or [("gold/reward", "gold (held-out)")], [])
    for name, title, keys, thresholds in [PLOTS[0], gold_plot, *PLOTS[1:]]:
        lines = [ln for ln in ((label, *_series(rows, key)) for key, label in keys) if ln[1]]
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
        for label, xs, ys in lines:
            ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, markersize=3, label=label)
        low, high = ax.get_ylim()  # the data's scale: a far-off threshold would flatten the curves
        for i, (key, label) in enumerate(thresholds):
            value = _threshold(stability, key)
            if value is None:
                continue
            where = "" if low <= value <= high else (" (above the plot)" if value > high else " (below the plot)")
            ax.axhline(value, color=f"C{i}", alpha=0.7, linestyle=":", label=f"{label} = {value:g}{where}")
        ax.set_ylim(low, high)
        if name == "gold.png":
            _gold_floor(ax, lines[0], stability)
        for a in alarms:
            ax.axvline(a["step"], color="red" if a.get("action") != "warn" else "orange", alpha=0.5, linestyle="--")
        ax.set_title(title + ("  (dashed: alarms)" if alarms else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / name)
        plt.close(fig)
        written.append(out_dir / name)
    return written


def _gold_floor(ax, line, stability: dict) -> None:
    """gold_divergence fires when the gold falls gold_drop below its best so far (and the proxy rose): that
    floor, drawn under the gold."""
    drop = _threshold(stability, "gold_divergence.gold_drop")
    _, xs, ys = line
    if drop is None or not ys:
        return
    best, floor = float("-inf"), []
    for y in ys:
        best = max(best, y)
        floor.append(best - drop)
    ax.step(xs, floor, where="post", color="red", alpha=0.6, linestyle=":",
            label=f"gold_divergence: best so far - {drop:g}")


def _log_as_keys(run_dir: Path) -> set[str]:
    specs = (saved_recipe(run_dir).get("eval") or {}).get("rewards") or []
    return {str(s["log_as"]) for s in specs if isinstance(s, dict) and s.get("log_as")}


def _img(source: Path | bytes, width: int | None = None, title: str = "") -> str:
    data = base64.b64encode(source.read_bytes() if isinstance(source, Path) else source).decode()
    style = f' style="width:{width}px;image-rendering:pixelated"' if width else ""
    return f'<img src="data:image/png;base64,{data}"{style} title="{html.escape(title)}">'


def write_report(run_dir: str | Path) -> Path:
    from rlkit.summary import summarize, summary_lines

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir} is not an rlkit run directory (no metrics.jsonl)")
    plots = write_plots(run_dir)
    rows, alarms = read_rows(run_dir / "metrics.jsonl", numbers=True), read_rows(run_dir / "alarms.jsonl")
    summary = summarize(run_dir)
    parts = [f"<h1>rlkit run: {html.escape(str(run_dir))}</h1>",
             "<pre class=summary>" + html.escape("\n".join(summary_lines(summary)[1:])) + "</pre>"]
    parts += _exported(run_dir)
    parts += _drawn("Samples side by side", _side_by_side, run_dir)
    parts.append("<h2>Plots</h2>" + "".join(f"<div>{_img(p)}</div>" for p in plots))
    evals = [r for r in rows if "eval/reward" in r]
    if evals:
        bench = sorted({k for r in evals for k in r if k.startswith("bench/")})
        # (a benchmark that is the gold comes first: gold/reward is then the repeated column left out)
        cols = ["step", "eval/reward", *bench, "gold/reward", *sorted(_log_as_keys(run_dir)), "probe/drift"]
        cols = [c for c in dict.fromkeys(cols) if any(c in r for r in evals)]
        # one gold reward logged under its log_as name is gold/reward again: one column, not two
        cols = [c for i, c in enumerate(cols) if not any(all(r.get(c) == r.get(d) for r in evals) for d in cols[:i])]
        parts.append("<h2>Evaluations (fixed prompts and noise)</h2>" + _table(evals, cols))
    parts.append("<h2>Alarms</h2>" + (_table([{**a, "figures": _figures(a)} for a in alarms],
                                             ["step", "kind", "action", "figures", "message"])
                                      if alarms else "<p>none</p>"))
    parts += _drawn("Recipe", _recipe_and_snippet, run_dir)
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>rlkit report</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;vertical-align:top}"
            "pre{background:#f6f6f6;padding:8px;overflow-x:auto}.scores{font-size:12px;color:#444}"
            "</style></head><body>" + "\n".join(parts) + "</body></html>")
    out = run_dir / "report.html"
    try:
        out.write_text(page)
    except OSError as err:
        raise OutputError(f"could not write {out}: {err.strerror or err}") from None
    return out


def _drawn(title: str, section, run_dir: Path) -> list[str]:
    """A section built from the files a run left beside its metrics (grids, their scores, config.yaml); one the
    files do not allow (damaged, edited, from another version) is named on the page and on the console."""
    try:
        return section(run_dir)
    except Exception as err:  # only shown: a damaged side file costs its section, never the report
        print(f"warning: report section '{title}' left out: {type(err).__name__}: {str(err)[:200]}")
        return [f"<h2>{html.escape(title)}</h2><p>left out: the files it is drawn from are damaged "
                f"({html.escape(type(err).__name__)})</p>"]


def _figures(alarm: dict) -> str:
    """What the alarm measured, next to the thresholds it crossed (both are in its figures)."""
    figures = alarm.get("figures")
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in (figures.items() if isinstance(figures, dict) else ()))


def _side_by_side(run_dir: Path, max_prompts: int = 16, width: int = 128) -> list[str]:
    """Per probe prompt: the source, the instruction, the samples at the first evaluation, at the exported step
    (final/'s) and at the latest, each with its proxy (and gold) score and what the rewards said about it. Tiles
    are cut from the evaluation grids; scores and rationales come from the JSON the run writes beside each grid.
    A run without evaluations shows its training grids instead."""

    grids = {int(g.stem.rsplit("_", 1)[1]): g for g in sorted((run_dir / "samples").glob("eval_step_*.png"))
             if g.with_suffix(".json").is_file()}  # eval_step_000010.png -> 10
    if not grids:
        return _training_samples(run_dir)
    exported = _exported_step(run_dir)
    steps = list(dict.fromkeys(s for s in (min(grids), exported, max(grids)) if s in grids))
    names = {s: ", ".join(n for at, n in ((min(grids), "first"), (exported, "exported in final/"),
                                           (max(grids), "latest")) if at == s) for s in steps}

    def tiles(grid: Path):
        scores = read_json(grid.with_suffix(".json"))
        k = scores["samples_per_prompt"]
        said = scores.get("rationales") or {}
        with Image.open(grid) as im:  # a row per prompt: source, references, a 2 px gap, samples (logs.save_grid)
            tiles = scores.get("tiles") or _square_tiles(im.size, k, len(scores["instructions"]))
            n = min(len(scores["instructions"]), len(tiles), max_prompts)
            rows = []
            for p in range(n):
                boxes = [tiles[p]["source"], *tiles[p]["samples"]]
                crop = [im.crop((x, y, x + w, y + h)) for x, y, w, h in boxes]
                crop[0] = [crop[0], *(im.crop((x, y, x + w, y + h)) for x, y, w, h in tiles[p]["references"])]
                idx = range(p * k, (p + 1) * k)
                rows.append((crop, [scores["proxy"][i] for i in idx],
                             [(scores["gold"] or [None] * len(scores["proxy"]))[i] for i in idx],
                             [{name: texts[i] for name, texts in said.items() if i < len(texts)} for i in idx]))
        return scores["instructions"], rows

    def samples(crops, proxy, gold, rationales) -> str:
        cells = []
        for image, p, g, why in zip(crops[1:], proxy, gold, rationales):
            label = f"proxy {p:.3f}" + (f"<br>gold {g:.3f}" if g is not None else "")
            cells.append(f"<div style='display:inline-block;margin-right:4px;vertical-align:top;max-width:"
                         f"{width + 80}px'>{_img(_png(image), width)}<div class=scores>{label}</div>"
                         f"{_rationale_html(why)}</div>")
        return "".join(cells)

    columns = [tiles(grids[s]) for s in steps]
    instructions = columns[0][0]
    head = "<tr><th>source</th><th>instruction</th>" + "".join(
        f"<th>step {s} ({names.get(s, '')})</th>" for s in steps) + "</tr>"
    body = "".join(f"<tr><td>{_references(columns[0][1][i][0][0], width)}</td><td>{html.escape(instructions[i])}</td>"
                   + "".join(f"<td>{samples(*col[1][i])}</td>" for col in columns) + "</tr>"
                   for i in range(min(len(col[1]) for col in columns)))
    return [f"<h2>Samples side by side (first {len(columns[0][1])} probe prompts, fixed noise)</h2>"
            f"<table>{head}{body}</table>"]


def _square_tiles(size: tuple[int, int], k: int, prompts: int) -> list[dict]:
    """The tiles of a grid written before grids recorded them: square rows of the source, a 2 px gap, k samples."""
    side = (size[0] - 2) // (k + 1)
    return [{"source": [0, p * side, side, side], "references": [],
             "samples": [[side + 2 + j * side, p * side, side, side] for j in range(k)]}
            for p in range(min(prompts, size[1] // side))]


def _references(images: list, width: int) -> str:
    """The source and, smaller beside it, a prompt's other reference images."""
    first, *others = images
    return _img(_png(first), width) + "".join(f"<br><small>reference {i + 2}</small><br>{_img(_png(r), width // 2)}"
                                              for i, r in enumerate(others))


def _rationale_html(rationales: dict) -> str:
    return "".join(f"<details class=scores><summary>{html.escape(name)} says</summary>"
                   f"<div style='white-space:pre-wrap'>{html.escape(str(text))}</div></details>"
                   for name, text in rationales.items() if text)


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _exported_step(run_dir: Path) -> int | None:
    step = read_json(run_dir / "final" / "rlkit_final.json").get("step")
    return step if type(step) is int else None


def _training_samples(run_dir: Path) -> list[str]:
    """The first and the latest training grids (source | the group's samples), with what the rewards said
    about the step's first samples (samples/rationales.jsonl)."""
    from rlkit.logs import read_rows

    grids = sorted((run_dir / "samples").glob("step_*.png"))
    if not grids:
        return []
    said = read_rows(run_dir / "samples" / "rationales.jsonl")
    parts = []
    for grid in dict.fromkeys((grids[0], grids[-1])):
        step = int(grid.stem.rsplit("_", 1)[1])
        why = {f"{r['reward']}, sample {r['sample']} ({r['score']:.3f})": r["rationale"]
               for r in said if r.get("step") == step}
        parts.append(f"<h3>step {step}</h3><div>{_img(grid)}</div>{_rationale_html(why)}")
    return ["<h2>Training samples (no evaluations: each row is a prompt, its source then its group)</h2>"
            + "".join(parts)]


def _recipe_and_snippet(run_dir: Path) -> list[str]:
    from omegaconf import OmegaConf

    from rlkit.export import loading_snippet

    config, recipe = run_dir / "config.yaml", saved_recipe(run_dir)
    if not config.is_file():
        return []
    out = []
    if (run_dir / "final").is_dir() and recipe:
        out.append("<h2>Load the weights</h2><pre>"
                   + html.escape(loading_snippet(OmegaConf.create(recipe), run_dir / "final")) + "</pre>")
    out.append("<h2>Resolved recipe</h2><details><summary>config.yaml</summary><pre>"
               + html.escape(config.read_text(errors="replace")) + "</pre></details>")
    return out


def _exported(run_dir: Path) -> list[str]:
    """Which weights final/ (and final_last/) hold, from the rlkit_final.json the run wrote beside them."""

    said = []
    for name in ("final", "final_last"):
        d = read_json(run_dir / name / "rlkit_final.json")
        if d:
            gold = f", gold {d['gold']:.4f}" if type(d.get("gold")) in (int, float) else ""
            kind = "the best gold evaluation's" if d.get("weights") == "best_gold" else "the last"
            said.append(f"<code>{name}/</code> holds {kind} weights (step {d.get('step')}{gold})")
    return [f"<p>Exported: {'; '.join(said)}.</p>"] if said else []


def _table(rows: list[dict], cols: list[str]) -> str:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v if v is not None else ""))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"

