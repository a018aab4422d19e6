"""Classification metrics and calibration, as plain math.

Everything here is computed in float64 on the CPU so results do not depend on
the dtype the model produced (bf16 logits are upcast exactly).  This module
imports nothing else from labelopt so it can be used and tested on its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

DEFAULT_SUMMARY_KEYS = ("top1", "top5", "nll", "ece")


@dataclass
class CalibrationBins:
    """Equal-width confidence bins over [0, 1].

    edges:      [n_bins + 1] bin boundaries, edges[0] == 0 and edges[-1] == 1
    counts:     int [n_bins] number of samples per bin
    confidence: [n_bins] mean max-probability per bin (nan where empty)
    accuracy:   [n_bins] fraction of correct predictions per bin (nan where empty)
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def n_bins(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())

    def ece(self) -> float:
        """Expected calibration error (L1): sum_b (n_b / N) * |acc_b - conf_b|.

        Empty bins carry zero weight, so their nan entries are skipped.
        """
        total = self.num_samples
        if total == 0:
            return 0.0
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        weights = self.counts[filled].astype(np.float64) / total
        return float(np.sum(weights * gaps))


def _as_float64(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    """Upcast any float tensor (bf16 included) to a float64 numpy array."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    # numpy has no bf16, so convert in torch first; bf16 -> f64 is exact.
    return x.detach().to(device="cpu", dtype=torch.float64).numpy()


def _as_labels(labels: torch.Tensor | np.ndarray, n: int, num_classes: int) -> np.ndarray:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    lab = labels.detach().to(device="cpu", dtype=torch.int64).numpy()
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"labels must have shape [{n}], got {list(lab.shape)}")
    if n and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got range [{lab.min()}, {lab.max()}]")
    return lab


def _check_2d(x: np.ndarray, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [N, C], got {list(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has no samples; metrics need at least one")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no classes")


def _bins_from(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> CalibrationBins:
    if not isinstance(n_bins, (int, np.integer)) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    n_bins = int(n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side="left") returns i with edges[i-1] < c <= edges[i], which is
    # exactly the right-closed convention; searching the stored edges (not c*n_bins)
    # keeps values lying exactly on an edge from drifting through rounding.
    # c == 0 gives i == 0 and is clipped into bin 0; any tiny overshoot past 1.0
    # from float error is clipped into the last bin.
    idx = np.searchsorted(edges, confidence, side="left") - 1
    idx = np.clip(idx, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    conf_sum = np.bincount(idx, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    filled = counts > 0
    conf_mean = np.full(n_bins, np.nan)
    acc_mean = np.full(n_bins, np.nan)
    conf_mean[filled] = conf_sum[filled] / counts[filled]
    acc_mean[filled] = acc_sum[filled] / counts[filled]
    return CalibrationBins(edges=edges, counts=counts, confidence=conf_mean, accuracy=acc_mean)


def calibration_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> CalibrationBins:
    """Bin samples by confidence (max probability) and compare with accuracy.

    The prediction is the argmax of `probs` (the first class on ties).
    Bin convention: with edges e_0=0 < e_1 < ... < e_n=1, a confidence c falls in
    bin b when e_b < c <= e_{b+1} (bins are closed on the right), except that
    c == 0 goes to bin 0.  So c == 1.0 lands in the last bin and a confidence
    exactly on an interior edge lands in the lower of the two bins.
    """
    p = _as_float64(probs, "probs")
    _check_2d(p, "probs")
    lab = _as_labels(labels, p.shape[0], p.shape[1])
    pred = np.argmax(p, axis=1)
    conf = p[np.arange(p.shape[0]), pred]
    return _bins_from(conf, pred == lab, n_bins)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """Top-1/top-5 accuracy (percent), NLL (nats), ECE (fraction) from raw logits.

    top5 is top-min(5, C) accuracy, so with fewer than 5 classes it is 100.
    Ties between logits are broken towards the lower class index, the same
    rule argmax uses, so top1 agrees with the calibration prediction.
    """
    z = _as_float64(logits, "logits")
    _check_2d(z, "logits")
    n, c = z.shape
    lab = _as_labels(labels, n, c)
    rows = np.arange(n)

    # log_softmax in float64 via torch, which handles the max-shift for us.
    logp = torch.log_softmax(torch.from_numpy(z), dim=1).numpy()
    nll = float(-np.mean(logp[rows, lab]))

    # A stable sort on -z keeps equal logits in index order (deterministic ties).
    k = min(5, c)
    order = np.argsort(-z, axis=1, kind="stable")
    top1_hit = order[:, 0] == lab
    topk_hit = np.any(order[:, :k] == lab[:, None], axis=1)

    probs = np.exp(logp)
    conf = probs[rows, order[:, 0]]
    bins = _bins_from(conf, top1_hit, n_bins)

    return {
        "top1": 100.0 * float(np.mean(top1_hit)),
        "top5": 100.0 * float(np.mean(topk_hit)),
        "nll": nll,
        "ece": bins.ece(),
        "num_samples": int(n),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1); std is 0.0 for a single value."""
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_std needs at least one value")
    mean = float(np.mean(arr))
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
    return mean, std


def summarize_runs(per_run: list[dict], keys: Sequence[str] = DEFAULT_SUMMARY_KEYS) -> dict[str, dict]:
    """Aggregate per-run metric dicts into key -> {"mean", "std", "values"}.

    Every run must report every key: silently averaging over a subset of runs
    would make the reported spread meaningless.
    """
    if not per_run:
        raise ValueError("summarize_runs needs at least one run")
    out: dict[str, dict] = {}
    for key in keys:
        values = []
        for i, run in enumerate(per_run):
            if key not in run:
                raise KeyError(f"run {i} has no metric {key!r} (has {sorted(run)})")
            # A diverged run's nan is kept: it propagates to the mean so it shows.
            values.append(float(run[key]))
        mean, std = mean_std(values)
        out[key] = {"mean": mean, "std": std, "values": values}
    return out
