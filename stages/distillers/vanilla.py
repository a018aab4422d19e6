"""`vanilla`: cross-entropy on the ground truth, no teacher (the baseline row)."""
from ..losses import ground_truth_cross_entropy
from .base import Distiller
from .registry import register_method


@register_method
class Vanilla(Distiller):
    name = "vanilla"
    summary = "cross-entropy on the ground truth; no teacher"

    def forward(self, logits, student, teacher, batch):
        ce = ground_truth_cross_entropy(logits, batch.labels)
        return {"loss": ce, "ce": ce}
