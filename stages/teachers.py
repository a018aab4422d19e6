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
        self.check_weights()

    @property
    def name(self) -> str:
        """How refusals name the teacher: its checkpoint's file name (else its architecture)."""
        return str(self.identity.get("checkpoint") or self.arch)

    def check_weights(self) -> None:
        """Weights or statistics that are NaN or inf make every output NaN: refused on load, before anything runs."""
        tensors = [*self.model.named_parameters(), *self.model.named_buffers()]
        for name, tensor in tensors:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                from .labelers import TeacherOutputError  # here: `labelopt train` loads neither labelers nor the store

                raise TeacherOutputError(
                    f"teacher checkpoint {self.name} holds weights that are not finite (NaN or inf) in {name}: its "
                    f"outputs would be NaN, so it labels nothing; use a sound checkpoint (its run diverged or the "
                    f"file was damaged)")

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
