"""Stage one's math: how each method turns teacher outputs into soft labels.

A labeler gets a batch of viewed uint8 images (and their sample indices) and
returns probabilities [B, C], optionally the logits behind them and teacher
features. Methods are registered by name in LABELERS.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..store.schema import StoreError
from .teachers import Teacher

# The one default label temperature, for stores (generate-labels) and online teachers (train-student) alike: the
# CIFAR distillation benchmark's KD temperature, so a default store and a default online run give the same labels.
DEFAULT_TEMPERATURE = 4.0


@dataclass
class LabelBatch:
    probs: torch.Tensor  # float32 [B, C]
    logits: torch.Tensor | None = None  # float32 [B, C]
    features: dict = field(default_factory=dict)  # tap -> float32 [B, D]


@dataclass
class LabelRequest:
    images: torch.Tensor  # uint8 [B, 3, H, W], already viewed
    indices: torch.Tensor  # int64 [B], sample index of each row
    labels: torch.Tensor  # int64 [B], ground truth
    taps: tuple[str, ...] = ()


class TeacherOutputError(StoreError):
    """A teacher whose weights or outputs are not finite: it gives no label, so nothing is stored or trained from it.
    A StoreError (what would have become a store's rows, or a student's targets, refused), so every command reports
    it as its one line."""


MAX_UNCHECKED = 8  # CUDA: batches whose verdict may still be on its way before the host waits for the oldest


class FiniteWatch:
    """Refuses teacher outputs that are not finite (NaN or inf), naming the teacher's checkpoint and the first bad
    sample: a label that is no label is never stored nor trained on.

    Off CUDA each batch is checked as it is made. On CUDA the check never makes the host wait for the device (stage
    one and stage two both keep it ahead of the device): a batch's verdict (its first bad row, or -1) is copied to
    pinned memory behind an event and read at a later call, once the device has got there, or at `flush`. What a
    run's last batches leave unread, the store's writer (stage one) and the loss's own watch (stage two) refuse."""

    def __init__(self):
        self.pending: deque = deque()  # (verdict on the host, its event, teacher name, sample indices)

    def observe(self, teacher: Teacher, indices: torch.Tensor, logits: torch.Tensor, features: dict) -> None:
        if logits.shape[0] == 0:
            return
        ok = torch.isfinite(logits).all(1)
        for value in features.values():
            ok &= torch.isfinite(value.flatten(1)).all(1)
        bad = torch.where(ok.all(), -1, (~ok).int().argmax())
        if bad.device.type != "cuda":
            self._refuse_if(int(bad), teacher.name, indices)
            return
        host = torch.empty((), dtype=bad.dtype, pin_memory=True)
        host.copy_(bad, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(bad.device))
        self.pending.append((host, done, teacher.name, indices.detach().clone()))
        self.poll()

    def poll(self, wait: bool = False) -> None:
        """Read every verdict the device has delivered (`wait`: every one, waiting for the device); wait for the
        oldest only when too many are on their way."""
        while self.pending and (wait or self.pending[0][1].query() or len(self.pending) > MAX_UNCHECKED):
            host, done, name, indices = self.pending.popleft()
            done.synchronize()
            self._refuse_if(int(host), name, indices)

    def flush(self) -> None:
        """Every verdict still on its way, waited for (the end of a run's labelling)."""
        self.poll(wait=True)

    @staticmethod
    def _refuse_if(row: int, name: str, indices: torch.Tensor) -> None:
        if row < 0:
            return
        raise TeacherOutputError(
            f"teacher {name} gave outputs that are not finite (NaN or inf) for sample {int(indices[row])}: it labels "
            f"nothing there, so nothing is stored or trained from it; use a sound checkpoint (its weights may have "
            f"overflowed: check it with labelopt evaluate)")


def mix_ground_truth(probs: torch.Tensor, labels: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - w) * p + w * onehot(y): the seed's --use_gt."""
    if weight == 0.0:
        return probs
    onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return (1.0 - weight) * probs + weight * onehot


class SoftLabeler:
    """`sl`: one teacher's softmax at temperature T."""

    min_teachers, max_teachers = 1, 1

    def __init__(self, teachers: list[Teacher], temperature: float, mix_gt: float = 0.0, **_):
        self.teachers, self.temperature, self.mix_gt = teachers, temperature, mix_gt
        self.watch = FiniteWatch()

    def teacher_outputs(self, teacher: Teacher, req: LabelRequest, taps=None) -> tuple[torch.Tensor, dict]:
        """The teacher's logits and taps for the request's images, refused when they are not finite (FiniteWatch)."""
        logits, features = teacher.outputs(req.images, req.taps if taps is None else taps)
        self.watch.observe(teacher, req.indices, logits, features)
        return logits, features

    def check_outputs(self) -> None:
        """Every teacher output so far proved finite (waits for the device's last verdicts)."""
        self.watch.flush()

    def __call__(self, req: LabelRequest) -> LabelBatch:
        logits, features = self.teacher_outputs(self.teachers[0], req)
        probs = torch.softmax(logits / self.temperature, dim=1)
        return LabelBatch(mix_ground_truth(probs, req.labels, self.mix_gt), logits, features)


class EnsembleLabeler(SoftLabeler):
    """`sl-ens`: the members' softmax outputs at temperature T, averaged.

    No logits: the mean of the members' logits is not the ensemble's label (softmax(mean z / T) differs from the
    mean of the softmaxes), so a method that needs logits must run one teacher.
    """

    min_teachers, max_teachers = 2, None

    def __call__(self, req: LabelRequest) -> LabelBatch:
        all_logits = [self.teacher_outputs(t, req, ())[0] for t in self.teachers]
        probs = torch.stack([torch.softmax(l / self.temperature, 1) for l in all_logits]).mean(0)
        return LabelBatch(mix_ground_truth(probs, req.labels, self.mix_gt), None)


class EncoderLabeler(SoftLabeler):
    """`sl-enc`: labels from an encoder's embedding instead of its classifier.

    Our reading of the method: class prototypes are the normalised means of the
    L2-normalised pooled embeddings of each class's training samples, and the encoder's
    classifier scores a sample by its cosine similarities to them. Cosines lie in [-1, 1],
    a scale no temperature chosen for logits suits (at T = 4 every label is near uniform),
    so they are first put on the teacher classifier's footing: logits = cosine / s, with s
    chosen once so that on the training split the encoder's classifier is exactly as
    confident (mean top probability at T = 1) as the teacher's own. Labels are then
    softmax(logits / T) like every other method's, `--temperature` means the same for all,
    and sl-enc differs from sl in which classes get the mass, not in how much. The stored
    "logits" are cosine / s, less their row mean.
    """

    needs_prototypes = True

    def __init__(self, teachers, temperature, mix_gt=0.0, cosine_scale: float | None = None, **_):
        super().__init__(teachers, temperature, mix_gt)
        self.prototypes: torch.Tensor | None = None
        self.cosine_scale = cosine_scale  # None until fitted

    def embed_with_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's logits and its normalised pooled embedding, from one forward pass."""
        logits, features = self.teachers[0].outputs(images, ("pool",))
        return logits, F.normalize(features["pool"], dim=1)

    def set_prototypes(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        if (counts == 0).any():
            missing = int((counts == 0).nonzero()[0])
            raise ValueError(f"class {missing} has no training sample to build its prototype")
        self.prototypes = F.normalize(sums / counts[:, None], dim=1)

    def fit_cosine_scale(self, embeddings: torch.Tensor, confidence: float) -> float:
        """The s at which softmax(cosine / s) of these (normalised) training embeddings has this mean top
        probability."""
        self.cosine_scale = scale_for_confidence(embeddings.float() @ self.prototypes.T.float(), confidence)
        return self.cosine_scale

    def __call__(self, req: LabelRequest) -> LabelBatch:
        logits, features = self.teacher_outputs(self.teachers[0], req, tuple(dict.fromkeys(("pool",) + req.taps)))
        similarity = F.normalize(features["pool"], dim=1) @ self.prototypes.to(features["pool"].device).T
        # Centred per row (softmax is unchanged): cosines that are all near 1 keep their differences in float16.
        encoder_logits = (similarity - similarity.mean(1, keepdim=True)) / self.cosine_scale
        probs = torch.softmax(encoder_logits / self.temperature, dim=1)
        kept = {k: v for k, v in features.items() if k in req.taps}
        return LabelBatch(mix_ground_truth(probs, req.labels, self.mix_gt), encoder_logits, kept)


def mean_confidence(logits: torch.Tensor) -> float:
    """Mean over rows of the top softmax probability."""
    return float(torch.softmax(logits.double(), dim=1).max(1).values.mean())


def scale_for_confidence(scores: torch.Tensor, confidence: float, low: float = 1e-4, high: float = 100.0) -> float:
    """s in [low, high] with mean_confidence(scores / s) = confidence, by bisection on log s (a row's top
    probability only falls as s grows); the nearer bound when the target lies outside what the scores can reach."""
    scores = scores.double().cpu()
    a, b = math.log(low), math.log(high)
    for _ in range(100):
        mid = (a + b) / 2
        if mean_confidence(scores / math.exp(mid)) > confidence:
            a = mid  # too sure: a larger s softens
        else:
            b = mid
    return math.exp((a + b) / 2)


class RandomLabeler:
    """`random`: the seed's control row, a fixed random probability vector per sample (same for every view).

    Each sample's vector comes from its own generator seeded with (seed, index), so
    the labels do not depend on batch order, rank count or resume.
    """

    min_teachers, max_teachers = 0, 0

    def __init__(self, teachers, temperature, num_classes: int, seed: int = 0, **_):
        self.num_classes, self.seed = num_classes, seed

    def check_outputs(self) -> None:
        """Nothing to wait for: no teacher runs."""

    def __call__(self, req: LabelRequest) -> LabelBatch:
        rows = [np.random.default_rng([self.seed, int(i)]).random(self.num_classes) for i in req.indices.tolist()]
        probs = torch.from_numpy(np.stack(rows)).float()
        return LabelBatch((probs / probs.sum(1, keepdim=True)).to(req.images.device))


LABELERS = {
    "sl": SoftLabeler,
    "sl-ens": EnsembleLabeler,
    "sl-enc": EncoderLabeler,
    "random": RandomLabeler,
}
