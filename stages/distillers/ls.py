"""`ls`: label smoothing, the one-hot target mixed with the uniform distribution."""
from dataclasses import dataclass

from ..losses import batch_cross_entropy
from .base import Distiller
from .registry import register_method


@register_method
class LabelSmoothing(Distiller):
    name = "ls"
    summary = "cross-entropy on the ground truth smoothed by epsilon; no teacher"

    @dataclass(frozen=True)
    class Options:
        label_smoothing: float = 0.1

    def forward(self, logits, student, teacher, batch):
        ce = batch_cross_entropy(logits, batch, self.options.label_smoothing)
        return {"loss": ce, "ce": ce}
