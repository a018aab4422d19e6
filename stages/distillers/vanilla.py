"""`vanilla`: cross-entropy on the ground truth, no teacher (the baseline row)."""
import torch.nn.functional as F

from .base import Distiller
from .registry import register_method


@register_method
class Vanilla(Distiller):
    name = "vanilla"
    summary = "cross-entropy on the ground truth; no teacher"

    def forward(self, logits, student, teacher, batch):
        ce = F.cross_entropy(logits.float(), batch.labels)
        return {"loss": ce, "ce": ce}
