"""`kd`: Hinton et al.'s knowledge distillation from teacher logits at a chosen temperature."""
import torch

from .base import SIGNAL_LOGITS, Distiller, kd_divergence


class KnowledgeDistillation(Distiller):
    name = "kd"
    summary = "ce_weight * CE + kd_weight * T^2 KL(softmax(teacher/T) || softmax(student/T))"
    teacher_signals = (SIGNAL_LOGITS,)
    defaults = {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0}

    def forward(self, logits, student, teacher, batch):
        t = self.options["temperature"]
        targets = torch.softmax(teacher[SIGNAL_LOGITS].float() / t, dim=1)
        return self.ce_plus(logits, batch.labels, "kd", kd_divergence(logits, targets, t))
