"""A model's logits over a whole split (each epoch's held-out evaluation and `labelopt evaluate`)."""
from __future__ import annotations

import torch

from ..data.datasets import PreparedDataset
from ..data.loading import SplitLoader, make_loader
from ..data.normalize import Normalizer
from ..progress import Progress
from .runtime import autocast

EVAL_BATCH_SIZE = 256
# The split a run is evaluated on, the first a dataset has: CIFAR's, STL-10's and digits' test, ImageNet's val.
HELD_OUT_SPLITS = ("test", "val")


def held_out_split(data: PreparedDataset) -> str | None:
    """The dataset's held-out split (test, else val), or None when it has neither."""
    return next((split for split in HELD_OUT_SPLITS if split in data.splits), None)


@torch.no_grad()
def predict(model: torch.nn.Module, loader: SplitLoader, normalize: Normalizer, *, bf16: bool = False,
            epoch: int = 0, desc: str = "evaluate") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels of a whole split, in loader order; `desc` names the work's progress."""
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    with Progress(loader.num_images(), desc) as bar:
        for images, labels, _ in loader.epoch(epoch):
            with autocast(loader.device, bf16):
                logits = model(normalize(images))
            all_logits.append(logits.float().cpu())
            all_labels.append(labels.cpu())
            bar.update(labels.shape[0])
    model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_labels)


def eval_loader(data: PreparedDataset, split: str, device: torch.device, indices=None) -> SplitLoader:
    """The whole `split` (or its sample `indices` alone: a run's validation split) as evaluation sees it: in order,
    nothing dropped, decoded without augmentation."""
    return make_loader(data, split, EVAL_BATCH_SIZE, shuffle=False, drop_last=False, train_decode=False,
                       device=device, indices=indices)
