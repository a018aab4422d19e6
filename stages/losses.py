"""The label losses shared by `labelopt train` and the stage-two methods, with torch their only import (the
training loop of `labelopt train` loads no method code): one definition of each."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ground_truth_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                               label_smoothing: float = 0.0) -> torch.Tensor:
    """CE on the one-hot truth, mixed with the uniform distribution by `label_smoothing` (vanilla and LS)."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def batch_cross_entropy(logits: torch.Tensor, batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """CE on a ViewedBatch's ground truth: its labels, or, for a mixed image, each part's class weighted by the
    part's share of the image (mixup / CutMix / RICAP's target); the same CE when nothing is mixed."""
    if batch.mix_labels is None:
        return ground_truth_cross_entropy(logits, batch.labels, label_smoothing)
    logits = logits.float()
    per_part = torch.stack([F.cross_entropy(logits, batch.mix_labels[:, m], reduction="none",
                                            label_smoothing=label_smoothing)
                            for m in range(batch.mix_labels.shape[1])], dim=1)
    return (per_part * batch.mix_weights).sum(1).mean()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over the batch of -sum_c q_c log softmax(z / T)_c (the seed's soft-label loss)."""
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    return -(targets * log_p).sum(1).mean() * temperature ** 2


def kd_divergence(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's term: T^2 * KL(q || softmax(z / T)), batch-mean reduction."""
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    return F.kl_div(log_p, targets, reduction="batchmean") * temperature ** 2
