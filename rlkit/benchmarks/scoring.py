"""Each benchmark's figures from its judged items, as the benchmark's own statistics compute them.

GEdit-Bench: per item SC = the lower of its two semantic scores, PQ = the lower of its two quality scores,
O = sqrt(SC x PQ); per task the means; the overall an unweighted mean over the tasks (a macro average, as the
official statistics); the same over the items with `Intersection_exist` (intersection) and per language (the
published figures are one language's: `languages.en` compares with GEdit-Bench-EN).
ImgEdit-Bench: per item its three 1-5 scores and their mean; per category each aspect's mean and the mean of the
item means; the overall an unweighted mean over the categories (the benchmark publishes per category only).
An item without every answer it needs is missing: counted, never scored.
"""

from __future__ import annotations

import math
from statistics import fmean


def gedit(items, scores: dict[tuple[str, str], list[float]]) -> dict:
    """``scores[(key, "SC" | "PQ")]``: the judge's two scores. -> the figures of scores.json."""
    rows, missing = [], 0
    for it in items:
        sc, pq = scores.get((it.key, "SC")), scores.get((it.key, "PQ"))
        if sc is None or pq is None:
            missing += 1
            continue
        s, q = min(sc), min(pq)
        rows.append({"task": it.task, "language": it.language, "intersection": it.intersection,
                     "SC": s, "PQ": q, "O": math.sqrt(s * q)})
    languages = sorted({r["language"] for r in rows})
    return {"overall": _macro(rows), "tasks": _per_task(rows),
            "intersection": _macro([r for r in rows if r["intersection"]]),
            "languages": {lang: _macro([r for r in rows if r["language"] == lang]) for lang in languages},
            "n": len(rows), "missing": missing}


def _per_task(rows: list[dict]) -> dict:
    tasks = sorted({r["task"] for r in rows})
    return {t: {**{k: fmean(r[k] for r in rows if r["task"] == t) for k in ("SC", "PQ", "O")},
                "n": sum(r["task"] == t for r in rows)} for t in tasks}


def _macro(rows: list[dict]) -> dict:
    tasks = _per_task(rows)
    if not tasks:
        return {"SC": None, "PQ": None, "O": None, "n": 0}
    return {**{k: fmean(t[k] for t in tasks.values()) for k in ("SC", "PQ", "O")}, "n": len(rows)}


def imgedit(items, scores: dict[tuple[str, str], list[float]], aspects: dict[str, list[str]]) -> dict:
    """``scores[(key, category)]``: the judge's three scores. -> the figures of scores.json."""
    per: dict[str, list[list[float]]] = {}
    missing = 0
    for it in items:
        got = scores.get((it.key, it.task))
        if got is None:
            missing += 1
            continue
        per.setdefault(it.task, []).append(got)
    categories = {}
    for cat, rows in sorted(per.items()):
        categories[cat] = {**{name: fmean(r[i] for r in rows) for i, name in enumerate(aspects[cat])},
                           "average": fmean(fmean(r) for r in rows), "n": len(rows)}
    overall = fmean(c["average"] for c in categories.values()) if categories else None
    return {"overall": {"average": overall, "n": sum(len(r) for r in per.values())}, "categories": categories,
            "missing": missing}
