"""`sl-kd`: the KD configuration on stored soft labels: weighted hard-label CE plus the soft term.

With a multi-teacher store this is the seed's SL-KD row (KD-SL in its follow-up).
"""

from .base import SIGNAL_TARGETS, Distiller, kd_divergence


class SoftLabelsKD(Distiller):
    name = "sl-kd"
    summary = "ce_weight * CE + kd_weight * T^2 KL(labels || student at T), T = the labels' temperature"
    teacher_signals = (SIGNAL_TARGETS,)
    defaults = {"ce_weight": 0.1, "kd_weight": 0.9}

    def forward(self, logits, student, teacher, batch):
        kd = kd_divergence(logits, teacher[SIGNAL_TARGETS], self.context.target_temperature)
        return self.ce_plus(logits, batch.labels, "kd", kd)
