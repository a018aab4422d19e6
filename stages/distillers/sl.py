"""`sl`: the student learns the stored soft labels alone (SL, SL-Enc, SL-Ens and random rows).

The loss is the seed's: soft cross-entropy between the labels and the student's
softmax at the labels' temperature, scaled by T^2.
"""
from ..losses import soft_cross_entropy
from ...store.schema import SIGNAL_TARGETS
from .base import Distiller
from .registry import register_method


@register_method
class SoftLabels(Distiller):
    name = "sl"
    summary = "soft-target cross-entropy at the labels' temperature, x T^2"
    teacher_signals = (SIGNAL_TARGETS,)

    def forward(self, logits, student, teacher, batch):
        soft = soft_cross_entropy(logits, teacher[SIGNAL_TARGETS], self.context.target_temperature)
        return {"loss": soft, "soft": soft}
