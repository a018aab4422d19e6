"""Pixels to a model's input: uint8 images to float, normalised by the dataset's mean and std."""
from __future__ import annotations

import torch


class Normalizer:
    """uint8 [B,3,H,W] -> float, (x/255 - mean) / std, on the images' device."""

    def __init__(self, mean, std, device, channels_last: bool = False):
        self.scale = (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0).reciprocal()
        self.shift = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = (images.float() - self.shift) * self.scale
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out
