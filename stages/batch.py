"""One training step's batch after the view draw: what a method and a teacher source see of it.

Its own module, with torch its only import, so the training loop of `labelopt train` needs no method, store or
teacher code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ViewedBatch:
    images: torch.Tensor  # uint8 [copies x B, 3, H, W], copies = a method's views per sample (1 by default)
    labels: torch.Tensor  # int64 [B]
    indices: torch.Tensor  # int64 [B] on the CPU: sample index in the split
    views: torch.Tensor | None = None  # int64 [B] on the CPU: position on a store's view axis (store-drawn views)
    # Mixed images (mixup, CutMix, RICAP): each part's class and share, on the device; None when not mixed. A
    # pack's batch has [B, G, parts]: each member's own parts first (pipeline/run/packs.py).
    mix_labels: torch.Tensor | None = None  # int64 [B, parts], part 0 = labels
    mix_weights: torch.Tensor | None = None  # float32 [B, parts], rows summing to 1
    # Teacher signals gathered from a label store for (indices, views) by the batch loader, on the device; empty
    # when the teacher runs online (stages/teacher_sources.py).
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)

    def device_tensors(self) -> list[torch.Tensor]:
        """The tensors that live on the training device (indices and views stay on the CPU)."""
        tensors = [self.images, self.labels, self.mix_labels, self.mix_weights, *self.teacher.values()]
        return [t for t in tensors if t is not None]
