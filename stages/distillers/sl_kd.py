"""`sl-kd`: the KD configuration on stored soft labels: weighted hard-label CE plus the soft term.

With a multi-teacher store this is the seed's SL-KD row (KD-SL in its follow-up).
"""
from dataclasses import dataclass

from ..losses import kd_divergence
from ...store.schema import SIGNAL_TARGETS
from .base import Distiller
from .registry import register_method


@register_method
class SoftLabelsKD(Distiller):
    name = "sl-kd"
    summary = "ce_weight * CE + kd_weight * T^2 KL(labels || student at T), T = the labels' temperature"
    teacher_signals = (SIGNAL_TARGETS,)

    @dataclass(frozen=True)
    class Options:
        ce_weight: float = 0.1
        kd_weight: float = 0.9

    def forward(self, logits, student, teacher, batch):
        kd = kd_divergence(logits, teacher[SIGNAL_TARGETS], self.context.target_temperature)
        return self.ce_plus(logits, batch, "kd", kd)
