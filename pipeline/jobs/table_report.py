"""A table's report: every run evaluated by `labelopt evaluate`'s code (evaluation.py), then per row the mean ±
sample std over seeds of top-1, top-5, NLL and ECE, as markdown (stdout, OUT/table.md) and JSON (OUT/table.json).

Each run is scored at its last epoch (last.pt). Its best.pt is scored too, as "best by validation", only where the
run chose it on a validation split held out of training (config.json's val_fraction > 0): a best.pt chosen on
the test split would report the test split's best guess of the epoch, never a fair number.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_json_atomic, write_text_atomic
from .table_file import METRICS, CheckSpec

LAST, BEST = "last", "best_by_validation"
DIGITS = {"top1": 2, "top5": 2, "nll": 4, "ece": 4}
HEADS = {"top1": "top-1 %", "top5": "top-5 %", "nll": "NLL", "ece": "ECE"}


def chosen_on_validation(folder: Path) -> bool:
    """best.pt exists and was chosen on a held-out validation split (never the test split)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return float(config.get("val_fraction") or 0) > 0 and (folder / "best.pt").is_file()


def checkpoints_of(plan) -> list[str]:
    """Every checkpoint the report scores: each teacher's last.pt, each run's last.pt and its validation best."""
    paths = [str(folder / "last.pt") for folder in plan.teachers.values()]
    for runs in plan.rows:
        for folder in runs.folders.values():
            paths.append(str(folder / "last.pt"))
            if chosen_on_validation(folder):
                paths.append(str(folder / "best.pt"))
    return paths


def write_report(plan, device: str, log) -> dict:
    """Evaluate every run of the plan, then write OUT/eval/evaluate.json, OUT/table.md and OUT/table.json."""
    from .evaluation import evaluate_checkpoints

    paths = checkpoints_of(plan)
    log(f"table: evaluate {len(paths)} checkpoints on {plan.data}")
    result = evaluate_checkpoints(paths, str(plan.data), device=device)
    (plan.out / "eval").mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan.out / "eval" / "evaluate.json", result)
    report = build_report(plan, {r["checkpoint"]: r for r in result["runs"]}, result["dataset"])
    text = markdown(report)
    write_text_atomic(plan.out / "table.md", text)
    write_json_atomic(plan.out / "table.json", report)
    return {**report, "markdown": text}


def scores(record: dict) -> dict:
    return {"epoch": record.get("epoch"), **{k: float(record[k]) for k in METRICS}}


def summary(runs: list[dict]) -> dict:
    """metric -> {"mean", "std" (sample std; 0 for one run), "values"}."""
    from ...stages.metrics import mean_std

    out = {}
    for key in METRICS:
        values = [r[key] for r in runs]
        mean, std = mean_std(values)
        out[key] = {"mean": mean, "std": std, "values": values}
    return out


def build_report(plan, evaluated: dict, dataset: dict) -> dict:
    """The report's JSON: every number, per run and per row."""
    table = plan.table
    teachers = [{"name": name, "arch": evaluated[str(folder / "last.pt")]["arch"], "folder": str(folder),
                 LAST: scores(evaluated[str(folder / "last.pt")])} for name, folder in plan.teachers.items()]
    rows = []
    for runs in plan.rows:
        per_seed = []
        for seed, folder in runs.folders.items():
            best = evaluated.get(str(folder / "best.pt")) if chosen_on_validation(folder) else None
            per_seed.append({"seed": seed, "folder": str(folder), LAST: scores(evaluated[str(folder / "last.pt")]),
                             BEST: scores(best) if best else None})
        every_best = all(r[BEST] for r in per_seed)
        rows.append({"name": runs.row.name, "label": runs.row.label, "method": runs.row.method,
                     "student": runs.row.student, "teacher": runs.teacher, "packed": runs.packed,
                     "seeds": list(runs.folders), "runs": per_seed, LAST: summary([r[LAST] for r in per_seed]),
                     BEST: summary([r[BEST] for r in per_seed]) if every_best else None,
                     "published": runs.row.published or None})
    test_images = int(dataset.get("num_samples") or 0)
    report = {"title": table.title, "table": str(table.path), "note": table.note, "smoke": table.smoke,
              "dataset": dataset, "test_images": test_images, "seeds": list(table.seeds), "teachers": teachers,
              "rows": rows}
    report["checks"] = [answer(c, rows, test_images) for c in table.checks]
    return report


def cell(stats: dict, metric: str) -> str:
    d = DIGITS[metric]
    return f"{stats[metric]['mean']:.{d}f} ± {stats[metric]['std']:.{d}f}"


def published_cell(published: dict | None, metric: str) -> str:
    if not published or metric not in published:
        return "-"
    d, std = DIGITS[metric], published.get(f"{metric}_std")
    return f"{published[metric]:.{d}f}" + ("" if std is None else f" ± {std:.{d}f}")


def short(arch: str) -> str:
    return arch.replace("resnet", "R")


def markdown_rows(report: dict, when: str) -> list[str]:
    published = [m for m in METRICS if any(m in (r["published"] or {}) for r in report["rows"])]
    head = ["row", "model", "teacher", "seeds", *(HEADS[m] for m in METRICS),
            *(f"{HEADS[m]} (published)" for m in published)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if when == LAST:
        for t in report["teachers"]:
            stats = summary([t[LAST]])
            lines.append("| " + " | ".join([f"teacher {t['name']}", short(t["arch"]), "-", "1",
                                            *(cell(stats, m) for m in METRICS), *("-" for _ in published)]) + " |")
    for r in report["rows"]:
        if r[when] is None:
            continue
        cells = [r["label"], short(r["student"]), r["teacher"], str(len(r["seeds"])),
                 *(cell(r[when], m) for m in METRICS), *(published_cell(r["published"], m) for m in published)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    """The table at the last epoch, the table by validation where runs have one, then what the numbers are."""
    seeds = ", ".join(map(str, report["seeds"]))
    parts = [f"## {report['title']}{' (smoke)' if report['smoke'] else ''}", "",
             *markdown_rows(report, LAST), "",
             f"Last epoch of each run; mean ± sample std over seeds {seeds}."]
    if any(r[BEST] for r in report["rows"]):
        parts += ["", "Best epoch by validation (best.pt, chosen on a split held out of training):", "",
                  *markdown_rows(report, BEST)]
    parts.append("")
    n = report["test_images"]
    if n:
        parts.append(f"{report['dataset'].get('name')} {report['dataset'].get('split')} split: {n} images, so one "
                     f"image is {100 / n:.2f} % top-1.")
    if report["smoke"]:
        parts.append("Smoke run (--smoke): one epoch per run and small teachers; it shows that every step runs, "
                     "not what the methods reach.")
    elif report["note"]:
        parts.append(report["note"])
    parts += [f"- {c['text']}" for c in report["checks"]]
    return "\n".join(parts) + "\n"


def answer(check: CheckSpec, rows: list[dict], test_images: int) -> dict:
    """A check answered from the rows' last-epoch means, beside the published direction where the file gives it."""
    by_name = {r["name"]: r for r in rows}
    a, b = by_name[check.row], by_name[check.than]
    m, sign = check.metric, 1 if check.better == "higher" else -1
    diff = a[LAST][m]["mean"] - b[LAST][m]["mean"]
    ours = sign * diff > 0
    d = DIGITS[m]
    text = (f"{check.question} ours: {a['label']} {cell(a[LAST], m)} vs {b['label']} {cell(b[LAST], m)}"
            + (f" ({diff * test_images / 100:+.1f} test images)" if m == "top1" and test_images else "")
            + ("; within one std" if abs(diff) <= max(a[LAST][m]["std"], b[LAST][m]["std"]) else "")
            + f" ({'yes' if ours else 'no'})")
    record = {"question": check.question, "metric": m, "difference": diff, "ours": ours, "published": None,
              "agrees": None}
    if check.published is not None:
        pa, pb = check.published
        theirs = sign * (pa - pb) > 0
        record.update(published=theirs, agrees=theirs == ours)
        text += (f"; published: {pa:.{d}f} vs {pb:.{d}f} ({'yes' if theirs else 'no'}) -> "
                 f"{'agrees' if theirs == ours else 'disagrees'}")
    record["text"] = text
    return record
