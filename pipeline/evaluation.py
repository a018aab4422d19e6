"""Running a model over a split and scoring it; `labelopt evaluate` for one or more checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..stages.metrics import calibration_bins, classification_metrics, summarize_runs
from .atomic import ensure_writable_dir, write_json_atomic
from .checkpoints import build_model_from_checkpoint, load_checkpoint
from .datasets import PreparedDataset, open_dataset
from .loading import SplitLoader, make_loader
from .runtime import autocast, check_precision, resolve_device
from .views import Normalizer

EVAL_BATCH_SIZE = 256
METRIC_KEYS = ("top1", "top5", "nll", "ece")


@torch.no_grad()
def predict(model: torch.nn.Module, loader: SplitLoader, normalize: Normalizer, *, bf16: bool = False,
            epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels of a whole split, in loader order."""
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    for images, labels, _ in loader.epoch(epoch):
        with autocast(loader.device, bf16):
            logits = model(normalize(images))
        all_logits.append(logits.float().cpu())
        all_labels.append(labels.cpu())
    model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_labels)


def eval_loader(data: PreparedDataset, split: str, device: torch.device) -> SplitLoader:
    return make_loader(data, split, EVAL_BATCH_SIZE, shuffle=False, drop_last=False, train_decode=False,
                       device=device)


def evaluate_checkpoints(checkpoints: list[str], data_path: str, *, split: str = "test", device: str = "auto",
                         bf16: bool = False, out: str | None = None, n_bins: int = 15) -> dict:
    """Metrics per checkpoint, mean ± std across them, reliability diagrams and metrics.json under `out`."""
    from .reports import plot_reliability  # matplotlib only when plotting

    data = open_dataset(data_path)
    dev = resolve_device(device)
    check_precision(dev, bf16)
    models = []
    for path in checkpoints:  # validate all before spending time on any
        body = load_checkpoint(path)
        models.append((path, body, build_model_from_checkpoint(body, path, num_classes=data.num_classes)))
    out_dir = Path(out) if out else None
    if out_dir is not None:
        ensure_writable_dir(out_dir, "output folder")
    loader = eval_loader(data, split, dev)
    normalize = Normalizer(data.mean, data.std, dev)
    per_run = []
    for i, (path, body, model) in enumerate(models):
        logits, labels = predict(model.to(dev), loader, normalize, bf16=bf16)
        metrics = classification_metrics(logits, labels, n_bins=n_bins)
        record = {"checkpoint": str(path), "arch": body["arch"], "epoch": body.get("epoch"), **metrics}
        if out_dir is not None:
            png = out_dir / (f"reliability-{i}.png" if len(models) > 1 else "reliability.png")
            bins = calibration_bins(torch.softmax(logits.double(), 1), labels, n_bins=n_bins)
            plot_reliability(bins, png, title=f"{body['arch']} on {data.name}/{split}")
            record["reliability_png"] = str(png)
        per_run.append(record)
    result = {
        "dataset": data.identity(split),
        "runs": per_run,
        "summary": summarize_runs(per_run, keys=METRIC_KEYS),
    }
    if out_dir is not None:
        write_json_atomic(out_dir / "metrics.json", result)
    return result


def result_json(result: dict) -> str:
    return json.dumps(result, indent=2)
