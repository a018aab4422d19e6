"""Helpers of benchmarks/digits_table.sh: run-folder state, scaled warm-ups, the checkpoints to evaluate, and the
table (mean ± std over seeds of top-1, NLL and ECE at the last and the best epoch, from `labelopt evaluate --json`)
with the seed README's CIFAR-100 directions checked against it.

    python benchmarks/digits_table_report.py state RUN_DIR EPOCHS WARMUP
    python benchmarks/digits_table_report.py warmups EPOCHS SMOKE OVERRIDE < `labelopt methods --json`
    python benchmarks/digits_table_report.py checkpoints MANIFEST
    python benchmarks/digits_table_report.py report MANIFEST EVAL_JSON SETTINGS_JSON OUT_DIR

`state` and `warmups` use the standard library only (they run once per run; importing torch would cost seconds).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

RECIPE_EPOCHS = 240  # the recipe's --epochs, to which the methods' default warm-ups belong
METRICS = ("top1", "nll", "ece")
ROW_NAMES = {"vanilla": "Vanilla", "ls": "LS", "random": "random", "kd": "KD", "sl": "SL", "sl+gt": "SL+GT",
             "sl-enc": "SL-Enc", "sl-ens": "SL-Ens", "sl-kd": "SL-KD", "vanilla+mix": "Vanilla + mix",
             "aug-sl": "Aug-SL", "aug-sl-kd": "Aug-SL-KD"}


def read_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- state of a run folder ----------------------------------------------------------------------------------------

def run_state(run: Path, epochs: int, warmup: int) -> tuple[str, str]:
    """("complete" | "partial" | "absent" | "other", why). Complete: last.pt, and metrics.jsonl holds every epoch
    (warm-up ones included). The training loop appends an epoch's line before it saves last.pt, so last.pt must
    be the newer file: a run killed between the two is partial (its --resume redoes that epoch)."""
    last, metrics, config_path = run / "last.pt", run / "metrics.jsonl", run / "config.json"
    if not (last.is_file() and config_path.is_file()):
        return "absent", "no last.pt"
    config = json.loads(config_path.read_text())
    made = (int(config["epochs"]), int(config.get("warmup_epochs") or 0))
    if made != (epochs, warmup):
        return "other", (f"{run} was made with --epochs {made[0]} and {made[1]} warm-up epochs; this table asks "
                         f"for {epochs} and {warmup}: delete it or use another OUT")
    lines = read_lines(metrics)
    done = bool(lines) and int(lines[-1]["epoch"]) + 1 >= epochs + warmup
    if done and last.stat().st_mtime_ns >= metrics.stat().st_mtime_ns:
        return "complete", f"{len(lines)} epochs"
    return "partial", f"{len(lines)} of {epochs + warmup} epochs"


def warmups(methods: list[dict], epochs: int, smoke: bool, override: str) -> dict[str, int]:
    """Warm-up epochs per method that has one: its default scaled by EPOCHS / 240 (the recipe's share of warm-up
    kept), at least 1; --smoke: 1; OVERRIDE (a number) for all. The defaults come from `labelopt methods`."""
    out = {}
    for m in methods:
        default = m["defaults"].get("warmup_epochs")
        if default is None:
            continue
        if override:
            out[m["method"]] = int(override)
        elif smoke:
            out[m["method"]] = 1
        else:
            out[m["method"]] = max(1, round(float(default) * epochs / RECIPE_EPOCHS))
    return out


# -- which checkpoints to evaluate ----------------------------------------------------------------------------------

def read_manifest(path: Path) -> list[dict]:
    """Lines "kind<TAB>row<TAB>seed<TAB>run_dir": kind is teacher or student."""
    entries = []
    for line in path.read_text().splitlines():
        kind, row, seed, run = line.split("\t")
        entries.append({"kind": kind, "row": row, "seed": int(seed), "run": run})
    return entries


def best_epoch(run: Path) -> tuple[int, int]:
    """(best, last) epoch indices from metrics.jsonl. best.pt is saved when test top-1 strictly improves, so the
    best epoch is the first that reaches the maximum."""
    lines = [line for line in read_lines(run / "metrics.jsonl") if "test_top1" in line]
    if not lines:
        raise SystemExit(f"{run}/metrics.jsonl has no test metrics")
    top = max(line["test_top1"] for line in lines)
    return next(int(line["epoch"]) for line in lines if line["test_top1"] == top), int(lines[-1]["epoch"])


def checkpoints(manifest: list[dict]) -> list[str]:
    """last.pt of every run, and best.pt where the best epoch is not the last (else it holds the same weights)."""
    paths = []
    for entry in manifest:
        run = Path(entry["run"])
        paths.append(str(run / "last.pt"))
        best, last = best_epoch(run)
        if best != last:
            paths.append(str(run / "best.pt"))
    return paths


# -- the table --------------------------------------------------------------------------------------------------------

def short(arch: str) -> str:
    return arch.replace("resnet", "R")


def teacher_label(config: dict) -> str:
    """Who taught a run, from its config.json: "-", "R56 (online)", "R32+R44+R56 (store, T 4)", "random store"."""
    source = config.get("teacher_source")
    if not source:
        return "-"
    if source["kind"] == "online":
        return "+".join(short(t["arch"]) for t in source["teachers"]) + " (online)"
    generator = source.get("generator") or {}
    teachers = "+".join(short(t["arch"]) for t in generator.get("teachers") or [])
    if not teachers:
        return f"{generator.get('method', '?')} store"
    return f"{teachers} (store, T {generator.get('temperature'):g})"


def summarize(values: list[dict]) -> dict:
    """metric -> {"mean", "std" (sample std, ddof 1; 0 for one seed), "values"}."""
    from labelopt.stages.metrics import mean_std

    out = {}
    for key in METRICS:
        series = [float(v[key]) for v in values]
        mean, std = mean_std(series)
        out[key] = {"mean": mean, "std": std, "values": series}
    return out


def collect(manifest: list[dict], evaluated: dict[str, dict]) -> list[dict]:
    """One record per row (teachers first, in manifest order): its runs' metrics at the last and the best epoch."""
    rows: dict[tuple[str, str], dict] = {}
    for entry in manifest:
        run = Path(entry["run"])
        config = json.loads((run / "config.json").read_text())
        last = evaluated[str(run / "last.pt")]
        best = evaluated.get(str(run / "best.pt"), last)
        key = (entry["kind"], entry["row"])
        record = rows.setdefault(key, {"kind": entry["kind"], "row": entry["row"], "arch": config["arch"],
                                       "teacher": teacher_label(config), "runs": []})
        record["runs"].append({"seed": entry["seed"], "run": str(run),
                               "last": {k: last[k] for k in ("epoch", "top1", "top5", "nll", "ece")},
                               "best": {k: best[k] for k in ("epoch", "top1", "top5", "nll", "ece")}})
    for record in rows.values():
        record["seeds"] = len(record["runs"])
        for when in ("last", "best"):
            record[when] = summarize([r[when] for r in record["runs"]])
    return sorted(rows.values(), key=lambda r: r["kind"] != "teacher")


# The seed README's CIFAR-100 table (R20 student; top-1 % and ECE, mean over its runs) and its "acc. gap" column
# (every baseline above vanilla): each direction is (question, metric, row a, better-is, row b, seed's a and b).
DIRECTIONS = [
    ("does SL lower ECE vs Vanilla?", "ece", "sl", "lower", "vanilla", (0.0213, 0.065)),
    ("does SL-KD beat KD on top-1?", "top1", "sl-kd", "higher", "kd", (69.67, 68.20)),
    ("does SL beat Vanilla on top-1?", "top1", "sl", "higher", "vanilla", (69.17, 67.66)),
    ("does SL-Ens beat SL on top-1?", "top1", "sl-ens", "higher", "sl", (69.66, 69.17)),
    ("does SL-KD lower ECE vs KD?", "ece", "sl-kd", "lower", "kd", (0.014, 0.061)),
    ("does LS beat Vanilla on top-1?", "top1", "ls", "higher", "vanilla", (67.84, 67.66)),
]
LABEL_ROWS = ("vanilla", "ls", "kd", "sl", "sl-enc", "sl-ens", "sl-kd")  # the seed's rows (random aside)


def fmt(metric: str, value: float) -> str:
    return f"{value:.2f}" if metric == "top1" else f"{value:.4f}"


def pair_direction(spec, means: dict, stds: dict, test_images: int) -> dict | None:
    question, metric, a, better, b, (seed_a, seed_b) = spec
    if a not in means or b not in means:
        return None
    sign = 1 if better == "higher" else -1
    diff = means[a][metric] - means[b][metric]
    seed_says, digits_says = sign * (seed_a - seed_b) > 0, sign * diff > 0
    detail = (f"{ROW_NAMES[a]} {fmt(metric, means[a][metric])} ± {fmt(metric, stds[a][metric])} vs "
              f"{ROW_NAMES[b]} {fmt(metric, means[b][metric])} ± {fmt(metric, stds[b][metric])}")
    if metric == "top1":
        detail += f" ({diff * test_images / 100:+.1f} test images)"
    if abs(diff) <= max(stds[a][metric], stds[b][metric]):
        detail += "; the gap is within one std of the seeds"
    seed = f"{ROW_NAMES[a]} {fmt(metric, seed_a)} vs {ROW_NAMES[b]} {fmt(metric, seed_b)}"
    return {"question": question, "seed": seed, "seed_says": seed_says, "digits": detail,
            "digits_says": digits_says, "agrees": digits_says == seed_says, "difference": diff}


def group_directions(means: dict, baselines: list[str]) -> list[dict]:
    out = []
    present = [r for r in LABEL_ROWS if r in means]
    if "sl-kd" in present and len(present) > 1:
        top = max(present, key=lambda r: means[r]["top1"])
        out.append({"question": "is SL-KD the best of the seed's label rows on top-1?",
                    "seed": "SL-KD 69.67, the highest", "seed_says": True, "digits_says": top == "sl-kd",
                    "agrees": top == "sl-kd",
                    "digits": f"highest: {ROW_NAMES[top]} {means[top]['top1']:.2f}"})
    others = [r for r in baselines if r in means]
    if "vanilla" in means and others:
        above = [r for r in others if means[r]["top1"] > means["vanilla"]["top1"]]
        out.append({"question": "does every distillation baseline beat Vanilla on top-1?",
                    "seed": "all 11 above the student alone (acc. gap 1.03-2.15)", "seed_says": True,
                    "digits_says": len(above) == len(others), "agrees": len(above) == len(others),
                    "digits": f"{len(above)} of {len(others)} above Vanilla "
                              f"{means['vanilla']['top1']:.2f}: {' '.join(above) or 'none'}"})
    return out


def directions(rows: list[dict], test_images: int, baselines: list[str]) -> list[dict]:
    """The seed's directions, each answered from the digits students' last-epoch means."""
    students = [r for r in rows if r["kind"] == "student"]
    means = {r["row"]: {k: r["last"][k]["mean"] for k in METRICS} for r in students}
    stds = {r["row"]: {k: r["last"][k]["std"] for k in METRICS} for r in students}
    out = [d for d in (pair_direction(s, means, stds, test_images) for s in DIRECTIONS) if d is not None]
    return out + group_directions(means, baselines)


def cell(stats: dict, metric: str) -> str:
    return f"{fmt(metric, stats[metric]['mean'])} ± {fmt(metric, stats[metric]['std'])}"


def markdown(rows: list[dict]) -> str:
    head = ["row", "model", "teacher", "seeds", "top-1 % last", "top-1 % best", "NLL last", "NLL best",
            "ECE last", "ECE best"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        name = "teacher" if r["kind"] == "teacher" else ROW_NAMES.get(r["row"], r["row"])
        cells = [name, short(r["arch"]), r["teacher"], str(r["seeds"]),
                 *(cell(r[when], m) for m in METRICS for when in ("last", "best"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(manifest_path: Path, eval_path: Path, settings_path: Path, out: Path) -> str:
    result = json.loads(eval_path.read_text())
    evaluated = {r["checkpoint"]: r for r in result["runs"]}
    rows = collect(read_manifest(manifest_path), evaluated)
    bad = [(r["row"], w, m) for r in rows for w in ("last", "best") for m in METRICS
           if not all(math.isfinite(v) for v in r[w][m]["values"])]
    test_images = int(result["dataset"]["num_samples"])
    settings = json.loads(settings_path.read_text())
    answers = directions(rows, test_images, settings["baselines"].split())
    notes = [f"{result['dataset']['name']} test split: {test_images} images, so one image is "
             f"{100 / test_images:.2f} % top-1.",
             f"Students {settings['student']}, {settings['epochs']} epochs (warm-ups {settings['warmups']}), "
             f"seeds {settings['seeds']}; teachers {settings['teacher_epochs']} epochs (one seed); label stores: "
             f"views {settings['views']}. Mean ± sample std over seeds; 'best' is the first epoch of highest "
             f"test top-1.",
             "CIFAR-100 directions (seed README, R20 students) against digits, last epoch:"]
    notes += [f"- {d['question']} CIFAR-100: {d['seed']} ({'yes' if d['seed_says'] else 'no'}); digits: "
              f"{d['digits']} ({'yes' if d['digits_says'] else 'no'}) -> "
              f"{'agrees' if d['agrees'] else 'disagrees'}" for d in answers]
    if bad:
        notes.append(f"non-finite numbers: {bad}")
    text = markdown(rows) + "\n\n" + "\n".join(notes) + "\n"
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(json.dumps({"settings": settings, "dataset": result["dataset"],
                                                "test_images": test_images, "rows": rows,
                                                "directions": answers}, indent=2) + "\n")
    return text


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "state":
        state, why = run_state(Path(args[0]), int(args[1]), int(args[2]))
        print(f"{state}\t{why}")
    elif command == "warmups":
        plan = warmups(json.load(sys.stdin), int(args[0]), args[1] == "1", args[2] if len(args) > 2 else "")
        print(" ".join(f"{m}={n}" for m, n in plan.items()))
    elif command == "checkpoints":
        print("\n".join(checkpoints(read_manifest(Path(args[0])))))
    elif command == "report":
        print(report(Path(args[0]), Path(args[1]), Path(args[2]), Path(args[3])), end="")
    else:
        print(f"unknown command {command}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
