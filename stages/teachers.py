"""An online teacher: a frozen model with its own input normalization and feature taps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..models import FeatureTaps


@dataclass
class Teacher:
    model: torch.nn.Module
    arch: str
    normalize: Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> the teacher's input
    identity: dict = field(default_factory=dict)  # what a store records: arch, checkpoint sha256, ...

    def __post_init__(self):
        # A teacher is never trained: eval mode (BatchNorm running statistics), no gradients.
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, taps: Sequence[str] = ()) -> tuple[torch.Tensor, dict]:
        """Logits (float32) and the requested taps for uint8 images [B, 3, H, W]."""
        inputs = self.normalize(images)
        if not taps:
            return self.model(inputs).float(), {}
        with FeatureTaps(self.model, self.arch, taps) as tapped:
            logits = self.model(inputs).float()
            features = {name: tapped.features[name].float() for name in taps}
        return logits, features
