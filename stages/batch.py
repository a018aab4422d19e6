"""One training step's batch after the view draw: what a method and a teacher source see of it.

Its own module, with torch its only import, so the training loop of `labelopt train` needs no method, store or
teacher code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ViewedBatch:
    images: torch.Tensor  # uint8 [copies x B, 3, H, W], copies = a method's views per sample (1 by default)
    labels: torch.Tensor  # int64 [B]
    indices: torch.Tensor  # int64 [B] on the CPU: sample index in the split
    views: torch.Tensor | None = None  # int64 [B] on the CPU: position on a store's view axis (store-drawn views)
    # Mixed images (mixup, CutMix, RICAP): each part's class and share, on the device; None when not mixed.
    mix_labels: torch.Tensor | None = None  # int64 [B, parts], part 0 = labels
    mix_weights: torch.Tensor | None = None  # float32 [B, parts], rows summing to 1
