"""A model's logits over a whole split (each epoch's test evaluation and `labelopt evaluate`)."""
from __future__ import annotations

import torch

from ..data.datasets import PreparedDataset
from ..data.loading import SplitLoader, make_loader
from ..data.normalize import Normalizer
from .runtime import autocast

EVAL_BATCH_SIZE = 256


@torch.no_grad()
def predict(model: torch.nn.Module, loader: SplitLoader, normalize: Normalizer, *, bf16: bool = False,
            epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels of a whole split, in loader order."""
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    for images, labels, _ in loader.epoch(epoch):
        with autocast(loader.device, bf16):
            logits = model(normalize(images))
        all_logits.append(logits.float().cpu())
        all_labels.append(labels.cpu())
    model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_labels)


def eval_loader(data: PreparedDataset, split: str, device: torch.device) -> SplitLoader:
    return make_loader(data, split, EVAL_BATCH_SIZE, shuffle=False, drop_last=False, train_decode=False,
                       device=device)
