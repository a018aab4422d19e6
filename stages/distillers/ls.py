"""`ls`: label smoothing, the one-hot target mixed with the uniform distribution."""
import torch.nn.functional as F

from .base import Distiller


class LabelSmoothing(Distiller):
    name = "ls"
    summary = "cross-entropy on the ground truth smoothed by epsilon; no teacher"
    defaults = {"label_smoothing": 0.1}

    def forward(self, logits, student, teacher, batch):
        ce = F.cross_entropy(logits.float(), batch.labels, label_smoothing=self.options["label_smoothing"])
        return {"loss": ce, "ce": ce}
