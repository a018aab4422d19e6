"""sl-enc's pass over the training split before labelling: class prototypes, and the scale that puts the encoder's
cosine similarities on a classifier's footing (stages/labelers.py, EncoderLabeler)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.datasets import PreparedDataset
from ..data.loading import block_loader
from ..errors import UserError
from ..run.runtime import autocast

FIT_ROWS = 20_000  # training images the cosine scale is matched on (a seeded subset of larger splits)


@torch.no_grad()
def build_prototypes(labeler, data: PreparedDataset, device, batch_size: int, bf16: bool, log) -> dict:
    """Class prototypes from the clean training images (identity view), then the cosine scale at which the
    encoder's classifier is as confident as the teacher's on up to FIT_ROWS of them."""
    log("generate-labels: sl-enc prototypes and cosine scale from the training split")
    n = data.num_samples("train")
    fit_rows = np.sort(np.random.default_rng(0).choice(n, FIT_ROWS, replace=False)) if n > FIT_ROWS else np.arange(n)
    in_fit = torch.zeros(n, dtype=torch.bool)
    in_fit[torch.from_numpy(fit_rows)] = True
    loader = block_loader(data, "train", np.arange(n, dtype=np.uint64), batch_size, train_decode=False)
    sums, counts = None, torch.zeros(data.num_classes)
    kept, teacher_confidence = [], []
    for images, labels, indices in loader:
        images = images.permute(0, 3, 1, 2).to(device, memory_format=torch.contiguous_format, copy=True)
        labels, indices = labels.view(-1).long().clone(), indices.view(-1).long().clone()
        with autocast(device, bf16):
            logits, emb = labeler.embed_with_logits(images)
        emb, logits = emb.float().cpu(), logits.float().cpu()
        if sums is None:
            sums = torch.zeros(data.num_classes, emb.shape[1])
        keep = labels >= 0
        sums.index_add_(0, labels[keep], emb[keep])
        counts += torch.bincount(labels[keep], minlength=data.num_classes).float()
        fit = keep & in_fit[indices]
        kept.append(emb[fit])
        teacher_confidence.append(torch.softmax(logits[fit].double(), 1).max(1).values)
    try:
        labeler.set_prototypes(sums, counts)
    except ValueError as exc:
        raise UserError(f"sl-enc: {exc}; the training split must hold every class") from None
    # Four significant digits: the fit is not finer than that, and a resumed run (or another rank) whose float
    # arithmetic differs in the last bits records the same scale.
    confidence = float(torch.cat(teacher_confidence).mean())
    scale = float(f"{labeler.fit_cosine_scale(torch.cat(kept), confidence):.4g}")
    labeler.cosine_scale = scale
    log(f"generate-labels: sl-enc cosine scale {scale:g} (logits = cosine / scale): the encoder's classifier as "
        f"confident as the teacher's ({confidence:.4f}) on {len(fit_rows)} training images")
    return {"cosine_scale": scale}


def share_prototypes(labeler, dist_info, device) -> dict:
    """Under torchrun every rank labels with rank 0's prototypes and scale (one store, one encoder classifier)."""
    if dist_info.enabled:
        both = torch.cat([labeler.prototypes.flatten().double(),
                          torch.tensor([labeler.cosine_scale], dtype=torch.float64)]).to(device)
        torch.distributed.broadcast(both, src=0)
        both = both.cpu()
        labeler.prototypes = both[:-1].float().view_as(labeler.prototypes)
        labeler.cosine_scale = float(both[-1])
    return {"cosine_scale": labeler.cosine_scale}
