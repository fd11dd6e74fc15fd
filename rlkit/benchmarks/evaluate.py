"""`rlkit eval`: each target's edit of every benchmark item (fixed seeds), judged with the benchmark's rubric,
into OUTPUT/: scores.json (per target, the benchmark's figures, with the judge and the rubric that made them),
judgements.jsonl (every answer, raw and parsed), images/TARGET/KEY.png and page.html (the targets side by side).

Resumable: an edit whose PNG exists is not generated again, a question already answered in judgements.jsonl
(same rubric, same judge model) is not asked again; one whose answers gave no scores stays missing unless
`retry_missing` asks it again.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlkit.benchmarks import scoring
from rlkit.benchmarks.items import read_gedit, read_imgedit
from rlkit.benchmarks.judging import BenchJudge, JudgeSettings, Request
from rlkit.benchmarks.page import slug, write_page
from rlkit.benchmarks.rubrics import Rubric
from rlkit.benchmarks.targets import edit, load_policy, resolve, shown_at
from rlkit.core.errors import OutputError, UserError, write_failure
from rlkit.core.images import open_rgb

BENCHMARKS = ("gedit", "imgedit")


def read_items(benchmark: str, data: str, image_root: str | None = None, max_items: int | None = None):
    items = read_gedit(data) if benchmark == "gedit" else read_imgedit(data, image_root)
    return items[:max_items] if max_items else items


def figures(benchmark: str, items, scores: dict, rubric: Rubric) -> dict:
    if benchmark == "gedit":
        return scoring.gedit(items, scores)
    return scoring.imgedit(items, scores, rubric.spec["categories"])


def headline(benchmark: str, result: dict) -> dict[str, float | None]:
    """The loop's figures (bench/...): GEdit's overall SC, PQ and O, ImgEdit's overall average."""
    if benchmark == "gedit":
        return {f"bench/gedit_{k}": result["overall"][k] for k in ("SC", "PQ", "O")}
    return {"bench/imgedit_average": result["overall"]["average"]}


def run_eval(targets: list[str], benchmark: str, data: str, judge: JudgeSettings, output: str,
             max_items: int | None = None, prompts: str | None = None, image_root: str | None = None,
             seed: int = 0, progress: bool = True, retry_missing: bool = False) -> Path:
    out = Path(output).expanduser()
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output '{out}': cannot write there ({err.strerror or err})") from None
    items = read_items(benchmark, data, image_root, max_items)
    rubric = Rubric(benchmark, prompts)
    resolved = [resolve(t) for t in targets]
    names = [t.name for t in resolved]
    if len(set(names)) != len(names):
        raise UserError(f"two targets are both '{sorted(n for n in names if names.count(n) > 1)[0]}'")
    asker = BenchJudge(judge)
    # every item's questions exist in the rubric (an unknown ImgEdit category is named now) and can be read
    asker.check([q for it in items for q in rubric.questions(it.task, it.instruction)])
    model = asker.connect()
    log = out / "judgements.jsonl"
    done = _done(log, rubric, model, retry_missing)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    requests = []
    for target in resolved:
        folder = out / "images" / slug(target.name)
        _generate(target, items, folder, seed, device, progress)
        for it in items:
            edited = _pixels(folder / f"{slug(it.key)}.png")
            source = shown_at(it, edited)
            for q in rubric.questions(it.task, it.instruction):
                if (target.name, it.key, q.name) not in done:
                    requests.append(Request((target.name, it.key, q.name), q, {"source": source, "edited": edited}))

    with open(log, "a") as f:
        def settle(request, answer, scores, tries):
            target, key, question = request.id
            row = {"target": target, "key": key, "question": question, "answer": answer, "scores": scores,
                   "tries": tries, "prompts": rubric.source, "judge": {**judge.record(), "model": model}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            done[request.id] = scores

        asker.ask(requests, settle, progress)
    result = {"benchmark": benchmark, "data": str(data), "items": len(items), "seed": seed,
              "judge": {**judge.record(), "model": model}, "prompts": rubric.source, "targets": {}}
    for target in resolved:
        scores = {(key, q): s for (t, key, q), s in done.items() if t == target.name and s is not None}
        result["targets"][target.name] = figures(benchmark, items, scores, rubric)
    _write(out / "scores.json", json.dumps(result, indent=1, ensure_ascii=False))
    write_page(out, benchmark, items, resolved, done, result)
    return out


def _generate(target, items, folder: Path, seed: int, device, progress: bool) -> None:
    from rich.progress import Progress

    todo = [it for it in items if not (folder / f"{slug(it.key)}.png").is_file()]
    if not todo:
        return
    policy = load_policy(target, device)
    folder.mkdir(parents=True, exist_ok=True)
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"editing ({target.name})", total=len(todo))
        for it in todo:
            _, image = edit(policy, it, seed)
            pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()
            from PIL import Image

            tmp = folder / f".tmp-{slug(it.key)}.png"
            try:
                Image.fromarray(pixels).save(tmp)
                tmp.replace(folder / f"{slug(it.key)}.png")  # whole or absent: a rerun regenerates a cut one
            except Exception as err:
                failure = write_failure(err)
                if failure is None:
                    raise
                raise OutputError(f"could not write {folder}: {failure}") from None
            bar.advance(task)


def _pixels(path: Path) -> torch.Tensor:
    import numpy as np

    img = open_rgb(path)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _done(log: Path, rubric: Rubric, model: str, retry_missing: bool) -> dict[tuple, list[float] | None]:
    """The questions already answered in judgements.jsonl by this rubric and judge model: their scores, or None
    for an answer that gave none (left out with ``retry_missing``, so they are asked again)."""
    done = {}
    if not log.is_file():
        return done
    for raw in log.read_bytes().splitlines():
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue  # a line cut by an interrupted run: that answer is asked again
        if not (isinstance(row, dict) and row.get("prompts") == rubric.source
                and (row.get("judge") or {}).get("model") == model):
            continue
        scores = row.get("scores")
        if isinstance(scores, list) or not retry_missing:
            done[(row.get("target"), row.get("key"), row.get("question"))] = scores if isinstance(scores, list) \
                else None
    return done


def _write(path: Path, text: str) -> None:
    try:
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as err:
        raise OutputError(f"could not write {path}: {err.strerror or err}") from None
