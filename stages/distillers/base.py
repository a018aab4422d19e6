"""What every stage-two method is: a distiller.

A distiller names the teacher signals it needs (`targets`: soft labels; `logits`;
`features:<tap>`), the student taps it reads, its options with their defaults,
and computes its loss. Extra trainable modules (regressors, embeddings) are
submodules: their parameters join the optimizer and the checkpoints.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

SIGNAL_TARGETS = "targets"
SIGNAL_LOGITS = "logits"
FEATURE_PREFIX = "features:"


@dataclass(frozen=True)
class DistillContext:
    """What a distiller may know when it is built."""

    num_classes: int
    num_samples: int = 0  # training-split size: the rows of a per-sample memory (CRD)
    target_temperature: float | None = None  # the temperature of the source's soft targets
    student_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # tap -> per-sample shape
    teacher_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # The class of every training index, for methods that set `needs_train_labels` (CRD's negatives).
    train_labels: torch.Tensor | None = None


# Ranges shared by the options of every method, matched by name: (does it apply, low, high, low_open, whole number).
# A method checks anything more specific itself.
OPTION_RULES = (
    (lambda k: k.endswith("_weight") or k == "margin", 0.0, 1e9, False, False),
    (lambda k: "temperature" in k or k == "nce_t", 0.0, 1e3, True, False),
    (lambda k: k == "label_smoothing", 0.0, 1.0, False, False),
    (lambda k: k.endswith("_momentum") or k.endswith("_keep_wrong"), 0.0, 1.0, False, False),
    (lambda k: k == "warmup_epochs", 0.0, 1e5, False, True),
    (lambda k: k.endswith("_lr"), 0.0, 10.0, True, False),
    (lambda k: k in ("feat_dim", "nce_k"), 1.0, 1e6, False, True),
)


def check_option(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value}")
    for applies, low, high, low_open, whole in OPTION_RULES:
        if not applies(key):
            continue
        inside = (value > low if low_open else value >= low) and value <= high
        if not inside or (whole and not float(value).is_integer()):
            kind = "a whole number" if whole else "a number"
            raise ValueError(f"{key} must be {kind} in {'(' if low_open else '['}{low:g}, {high:g}], got {value:g}")
        if key == "label_smoothing" and value >= 1.0:
            raise ValueError(f"label_smoothing must be below 1, got {value:g}")


class Distiller(nn.Module, ABC):
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    teacher_signals: ClassVar[tuple[str, ...]] = ()
    student_taps: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, float]] = {}
    # Whether a label store can provide every teacher signal (an online teacher always can).
    store_servable: ClassVar[bool] = True
    # False where the warm-up loss does not involve the student (a teacher-side module learns): the student
    # then runs in eval mode without gradient, so its BatchNorm statistics stay as initialised.
    student_learns_in_warmup: ClassVar[bool] = True
    needs_train_labels: ClassVar[bool] = False  # context.train_labels filled in
    warmup_lr_decay_at: ClassVar[tuple[float, ...]] = ()  # fractions of the warm-up (default: a constant lr)

    def __init__(self, context: DistillContext, **options: float):
        super().__init__()
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f"options {unknown} do not apply to --method {self.name} "
                             f"(its options: {', '.join(sorted(self.defaults)) or 'none'})")
        self.context = context
        self.options = {**self.defaults, **{k: float(v) for k, v in options.items()}}
        for key, value in self.options.items():
            check_option(key, value)
        self.epoch = 0

    @property
    def warmup_epochs(self) -> int:
        """Epochs of a warm-up phase that runs before the recipe's epochs (option `warmup_epochs`)."""
        return int(self.options.get("warmup_epochs", 0))

    @property
    def warmup_milestones(self) -> tuple[int, ...]:
        """Warm-up epochs where its lr drops by the recipe's gamma: `warmup_lr_decay_at` fractions of it."""
        n = self.warmup_epochs
        return tuple(sorted({m for f in self.warmup_lr_decay_at if 1 <= (m := round(n * f)) < n}))

    @property
    def warmup_lr(self) -> float | None:
        """The warm-up's base learning rate (option `warmup_lr`); None: the recipe's."""
        lr = self.options.get("warmup_lr")
        return None if lr is None else float(lr)

    @property
    def views_per_sample(self) -> int:
        """Views the sampler draws of each image per step, in blocks (copy k of all B images in rows [kB, (k+1)B),
        each copy its own crop, all copies of an image one flip); `expand` receives them. Default 1."""
        return 1

    @property
    def in_warmup(self) -> bool:
        return self.epoch < self.warmup_epochs

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop at the start of every epoch (warm-up epochs included)."""
        self.epoch = epoch

    def expand(self, inputs: torch.Tensor, batch):
        """The inputs the student and the teacher see at this step; a method that adds transformed copies of
        the images (e.g. rotations) returns them here, the original B rows first. Default: unchanged."""
        return inputs, batch

    def ce_plus(self, logits: torch.Tensor, labels: torch.Tensor, name: str, term: torch.Tensor) -> dict:
        """Most methods' form: ce_weight * CE(logits, labels) + <name>_weight * term, with both parts logged."""
        ce = F.cross_entropy(logits.float(), labels)
        return {"loss": self.options["ce_weight"] * ce + self.options[f"{name}_weight"] * term, "ce": ce, name: term}

    @abstractmethod
    def forward(self, logits: torch.Tensor, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                batch) -> dict[str, torch.Tensor]:
        """Loss parts for one step; "loss" is the total that is minimised.

        logits: the student's [B, C]; student: its taps; teacher: the requested signals;
        batch: the step's `stages.sources.ViewedBatch` (labels, sample indices, views).
        """


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over the batch of -sum_c q_c log softmax(z / T)_c (the seed's soft-label loss)."""
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    return -(targets * log_p).sum(1).mean() * temperature ** 2


def kd_divergence(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's term: T^2 * KL(q || softmax(z / T)), batch-mean reduction."""
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    return F.kl_div(log_p, targets, reduction="batchmean") * temperature ** 2
