"""sl-enc's pass over the training split before labelling: class prototypes, and the scale that puts the encoder's
cosine similarities on a classifier's footing (stages/labelers.py, EncoderLabeler)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.datasets import PreparedDataset
from ..data.loading import block_loader
from ..progress import Progress
from ..errors import UserError
from ..run.runtime import autocast

FIT_ROWS = 20_000  # training images the cosine scale is matched on (a seeded subset of larger splits)


@torch.no_grad()
def build_prototypes(labeler, data: PreparedDataset, device, batch_size: int, bf16: bool, log,
                     dist_info=None) -> dict:
    """Class prototypes from the clean training images (identity view), then the cosine scale at which the
    encoder's classifier is as confident as the teacher's on up to FIT_ROWS of them. Under torchrun each rank
    embeds its share of the split (every world-size-th image) and rank 0 fits the scale on all of them."""
    enabled = dist_info is not None and dist_info.enabled
    if not enabled or dist_info.is_main:
        log("generate-labels: sl-enc prototypes and cosine scale from the training split")
    n = data.num_samples("train")
    fit_rows = np.sort(np.random.default_rng(0).choice(n, FIT_ROWS, replace=False)) if n > FIT_ROWS else np.arange(n)
    in_fit = torch.zeros(n, dtype=torch.bool)
    in_fit[torch.from_numpy(fit_rows)] = True
    share = np.arange(n, dtype=np.uint64)[dist_info.rank::dist_info.world_size] if enabled else np.arange(
        n, dtype=np.uint64)
    sums, counts, kept, teacher_confidence = embed_classes(labeler, data, share, in_fit, device, batch_size, bf16,
                                                           show=not enabled or dist_info.is_main)
    if enabled:  # every rank's sums, and rank 0 alone gets the fit rows (they can be large: rows x embedding)
        sums, counts = (all_reduced(t, device) for t in (sums, counts))
        parts = [None] * dist_info.world_size if dist_info.is_main else None
        torch.distributed.gather_object((torch.cat(kept), torch.cat(teacher_confidence)), parts, dst=0)
        if dist_info.is_main:
            kept, teacher_confidence = [p[0] for p in parts], [p[1] for p in parts]
    try:  # on every rank: each refuses a split that lacks a class, none waits for the others
        labeler.set_prototypes(sums.float(), counts.float())
    except ValueError as exc:
        raise UserError(f"sl-enc: {exc}; the training split must hold every class") from None
    if enabled and not dist_info.is_main:
        return {}  # rank 0's scale comes with share_prototypes
    # Four significant digits: the fit is not finer than that, and a resumed run (or another rank) whose float
    # arithmetic differs in the last bits records the same scale.
    confidence = float(torch.cat(teacher_confidence).mean())
    scale = float(f"{labeler.fit_cosine_scale(torch.cat(kept), confidence):.4g}")
    labeler.cosine_scale = scale
    log(f"generate-labels: sl-enc cosine scale {scale:g} (logits = cosine / scale): the encoder's classifier as "
        f"confident as the teacher's ({confidence:.4f}) on {len(fit_rows)} training images")
    return {"cosine_scale": scale}


def embed_classes(labeler, data: PreparedDataset, rows: np.ndarray, in_fit: torch.Tensor, device, batch_size: int,
                  bf16: bool, show: bool = True):
    """Per-class sums (float64: the same whatever order or ranks add them in, to float32 precision) and counts of
    these rows' embeddings, and the embeddings and teacher confidences of those in the fit set. `show`: the
    progress of this process (rank 0's under torchrun)."""
    loader = block_loader(data, "train", rows, batch_size, train_decode=False)
    sums, counts = None, torch.zeros(data.num_classes, dtype=torch.float64)
    kept, teacher_confidence = [torch.zeros(0, 0)], [torch.zeros(0, dtype=torch.float64)]
    with Progress(len(rows), "generate-labels: sl-enc prototypes", enabled=show) as bar:
        for images, labels, indices in loader:
            images = images.permute(0, 3, 1, 2).to(device, memory_format=torch.contiguous_format, copy=True)
            labels, indices = labels.view(-1).long().clone(), indices.view(-1).long().clone()
            with autocast(device, bf16):
                logits, emb = labeler.embed_with_logits(images)
            emb, logits = emb.float().cpu(), logits.float().cpu()
            if sums is None:
                sums = torch.zeros(data.num_classes, emb.shape[1], dtype=torch.float64)
                kept = [torch.zeros(0, emb.shape[1])]
            keep = labels >= 0
            sums.index_add_(0, labels[keep], emb[keep].double())
            counts += torch.bincount(labels[keep], minlength=data.num_classes).double()
            fit = keep & in_fit[indices]
            kept.append(emb[fit])
            teacher_confidence.append(torch.softmax(logits[fit].double(), 1).max(1).values)
            bar.update(len(labels))
    return sums, counts, kept, teacher_confidence


def all_reduced(tensor: torch.Tensor, device) -> torch.Tensor:
    on_device = tensor.to(device)  # NCCL reduces GPU tensors only
    torch.distributed.all_reduce(on_device)
    return on_device.cpu()


def share_prototypes(labeler, dist_info, device) -> dict:
    """Under torchrun every rank labels with rank 0's prototypes and scale (one store, one encoder classifier; only
    rank 0 has fitted a scale)."""
    if dist_info.enabled:
        both = torch.cat([labeler.prototypes.flatten().double(),
                          torch.tensor([labeler.cosine_scale or 0.0], dtype=torch.float64)]).to(device)
        torch.distributed.broadcast(both, src=0)
        both = both.cpu()
        labeler.prototypes = both[:-1].float().view_as(labeler.prototypes)
        labeler.cosine_scale = float(both[-1])
    return {"cosine_scale": labeler.cosine_scale}
