"""`vanilla`: cross-entropy on the ground truth, no teacher (the baseline row)."""
from ..losses import batch_cross_entropy
from .base import Distiller
from .registry import register_method


@register_method
class Vanilla(Distiller):
    name = "vanilla"
    summary = "cross-entropy on the ground truth; no teacher (with --mix: mixup / CutMix / RICAP's mixed one-hot)"
    mixes = "optional"

    def forward(self, logits, student, teacher, batch):
        ce = batch_cross_entropy(logits, batch)
        return {"loss": ce, "ce": ce}
