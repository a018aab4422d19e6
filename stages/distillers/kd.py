"""`kd`: Hinton et al.'s knowledge distillation from teacher logits at a chosen temperature."""
from dataclasses import dataclass

import torch

from ..losses import kd_divergence
from ...store.schema import SIGNAL_LOGITS
from .base import Distiller
from .registry import register_method


@register_method
class KnowledgeDistillation(Distiller):
    name = "kd"
    summary = "ce_weight * CE + kd_weight * T^2 KL(softmax(teacher/T) || softmax(student/T))"
    teacher_signals = (SIGNAL_LOGITS,)

    @dataclass(frozen=True)
    class Options:
        ce_weight: float = 0.1
        kd_weight: float = 0.9
        temperature: float = 4.0

    def forward(self, logits, student, teacher, batch):
        t = self.options.temperature
        targets = torch.softmax(teacher[SIGNAL_LOGITS].float() / t, dim=1)
        return self.ce_plus(logits, batch, "kd", kd_divergence(logits, targets, t))
