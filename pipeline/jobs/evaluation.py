"""Running a model over a split and scoring it; `labelopt evaluate` for one or more checkpoints."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ...stages.metrics import calibration_bins, classification_metrics, summarize_runs
from ..atomic import ensure_writable_dir, write_json_atomic
from ..run.checkpoints import build_model_from_checkpoint, load_checkpoint, trained_elsewhere, training_stats
from ..data.datasets import PreparedDataset, open_dataset
from ..locks import output_lock
from ..run.prediction import eval_loader, held_out_split, predict
from ..run.runtime import check_precision, resolve_device
from ..data.normalize import Normalizer
from ..errors import UserError

METRIC_KEYS = ("top1", "top5", "nll", "ece")


COMPARISON_PNG = "reliability-comparison.png"


def checkpoint_names(paths: list[str]) -> list[str]:
    """A short name per checkpoint that tells them apart: its run folder's name, widened only where two share it.

    Candidates grow one step at a time: folder, folder/stem, parent/folder/stem, ... (each level has one more
    '/', so levels cannot collide); the same file given twice is numbered: "run (2)".
    """
    def candidates(path: str) -> list[str]:
        *folders, stem = Path(path).resolve().with_suffix("").parts[1:]  # parts[0] is the root
        if not folders:
            return [stem]
        return [folders[-1]] + ["/".join([*folders[len(folders) - k:], stem]) for k in range(1, len(folders) + 1)]

    options = [candidates(p) for p in paths]
    level = [0] * len(paths)
    while True:
        names = [opts[lv] for opts, lv in zip(options, level)]
        # Widen a name only where another *file* shares it; the same file twice cannot be told apart that way.
        clashing = [i for i, n in enumerate(names) if level[i] + 1 < len(options[i])
                    and any(m == n and options[j] != options[i] for j, m in enumerate(names))]
        if not clashing:
            break
        for i in clashing:
            level[i] += 1
    return [n if n not in names[:i] else f"{n} ({names[:i].count(n) + 1})" for i, n in enumerate(names)]


def _slug(text: str) -> str:
    """A file-name-safe form: letters, digits, '.', '_' and '-' kept, any other run of characters -> '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:120] or "run"


def plot_file_names(names: list[str], paths: list[str]) -> list[str]:
    """reliability-<name>[-<stem>].png per checkpoint, always naming the checkpoint file, never one name twice."""
    taken = {COMPARISON_PNG.casefold()}
    files = []
    for name, path in zip(names, paths):
        stem = Path(path).stem
        base = _slug(name.replace("/", "-") if "/" in name else f"{name}-{stem}")
        file, n = f"reliability-{base}.png", 1
        while file.casefold() in taken:  # casefold: one folder on a case-insensitive filesystem
            n += 1
            file = f"reliability-{base}-{n}.png"
        taken.add(file.casefold())
        files.append(file)
    return files


def epochs_done(body: dict) -> int | None:
    """Finished epochs of the run when the checkpoint was saved (its "epoch" is the 0-based index of the last)."""
    return None if body.get("epoch") is None else int(body["epoch"]) + 1


def evaluate_checkpoints(checkpoints: list[str], data_path: str, *, split: str | None = None, device: str = "auto",
                         bf16: bool = False, out: str | None = None, n_bins: int = 15, compare: bool = False,
                         resolution: int | None = None) -> dict:
    """Metrics per checkpoint and mean ± std across them; under `out` metrics.json and a reliability diagram per
    checkpoint, and with `compare` one figure with every checkpoint's calibration curve. `split`: None for the
    held-out split (test, else val); `resolution`: JPEG datasets' side, None for each checkpoint's own."""

    data = open_dataset(data_path)
    split = split or held_out_split(data)
    if split is None:
        raise UserError(f"{data.path} has no held-out split (test or val); it has: {', '.join(data.splits)}; "
                        f"pass --split")
    data.split_meta(split)  # a split the data lacks is refused before any model is built
    dev = resolve_device(device)
    check_precision(dev, bf16)
    models = []
    for path in checkpoints:  # validate all before spending time on any
        body = load_checkpoint(path)
        seen = data.at_resolution(resolution or trained_resolution(body, data))
        models.append((path, body, build_model_from_checkpoint(body, path, num_classes=data.num_classes), seen))
    out_dir = Path(out) if out else None
    if out_dir is None:
        return measure(models, data, split, dev, bf16, n_bins, None, compare)
    ensure_writable_dir(out_dir, "output folder")
    with output_lock(out_dir, "evaluation folder"):
        return measure(models, data, split, dev, bf16, n_bins, out_dir, compare)


def trained_resolution(body: dict, data: PreparedDataset) -> int | None:
    """The side a checkpoint's model was trained at on a JPEG dataset (its record of input_size), else None."""
    side = (body.get("dataset") or {}).get("input_size")
    return None if data.fixed_size or isinstance(side, bool) or not isinstance(side, int) else side


def measure(models: list, data: PreparedDataset, split: str, dev: torch.device, bf16: bool, n_bins: int,
            out_dir: Path | None, compare: bool) -> dict:
    from .reports import plot_comparison, plot_reliability  # matplotlib only when plotting

    checkpoints = [path for path, _, _, _ in models]
    names = checkpoint_names([str(p) for p in checkpoints])
    files = plot_file_names(names, [str(p) for p in checkpoints])
    per_run, curves, plots = [], [], []
    for (path, body, model, seen), name, file in zip(models, names, files):
        normalize = Normalizer(*training_stats(body, data.mean, data.std), dev)  # the model's own preprocessing
        logits, labels = predict(model.to(dev), eval_loader(seen, split, dev), normalize, bf16=bf16,
                                 desc=f"{name} on {split}")
        check_finite_outputs(logits, path, split)
        metrics = classification_metrics(logits, labels, n_bins=n_bins)
        record = {"checkpoint": str(path), "run": name, "arch": body["arch"], "epoch": epochs_done(body), **metrics}
        if not data.fixed_size:
            record["resolution"] = seen.input_size
        note = trained_elsewhere(body, data)
        if note:
            record["note"] = note
        if out_dir is not None:
            bins = calibration_bins(torch.softmax(logits.double(), 1), labels, n_bins=n_bins)
            plots.append((bins, out_dir / file, run_title(record, f"{data.name}/{split}")))
            record["reliability_png"] = str(out_dir / file)
            curves.append((name, bins))
        per_run.append(record)
    for bins, png, title in plots:  # once every model has scored: a refused one leaves no file behind
        plot_reliability(bins, png, title=title)
    result = {
        "dataset": data.identity(split),
        "runs": per_run,
        "summary": summarize_runs(per_run, keys=METRIC_KEYS),
    }
    if out_dir is not None and compare:
        plot_comparison(curves, out_dir / COMPARISON_PNG, title=f"calibration on {data.name}/{split}")
        result["comparison_png"] = str(out_dir / COMPARISON_PNG)
    if out_dir is not None:
        write_json_atomic(out_dir / "metrics.json", result)
    return result


def check_finite_outputs(logits: torch.Tensor, path, split: str) -> None:
    """A model whose outputs are NaN or inf scores nothing: said so, rather than metrics of nan."""
    finite = torch.isfinite(logits).all(1)
    if not bool(finite.all()):
        first = int((~finite).int().argmax())
        raise UserError(f"{path}: the model's outputs are not finite (NaN or inf) on {int((~finite).sum())} of "
                        f"{len(finite)} {split} images (the first: sample {first}), so it has no accuracy to report; "
                        f"its weights are damaged or its run diverged: evaluate another checkpoint")


def run_title(record: dict, where: str) -> str:
    """A diagram's title: which run and checkpoint, the model and its epochs, the data."""
    n = record["epoch"]
    epochs = "" if n is None else f", {n} epoch{'' if n == 1 else 's'}"
    return f"{record['run']} ({Path(record['checkpoint']).name}): {record['arch']}{epochs}\non {where}"


def result_json(result: dict) -> str:
    return json.dumps(result, indent=2)
