"""What every stage-two method is: a distiller.

A distiller names the teacher signals it needs (`targets`: soft labels; `logits`;
`features:<tap>`), the student taps it reads, its options (a nested frozen
dataclass `Options` of int, float and bool fields with their defaults), and
computes its loss. Extra trainable modules (regressors, embeddings) are
submodules: their parameters join the optimizer and the checkpoints.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..losses import batch_cross_entropy
from ..phases import Phases
from ...store.schema import FEATURE_PREFIX, STORABLE_TAPS, store_can_hold
from .options import NoOptions, build_options, check_declaration, option_types


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
    # The indices training draws from, sorted, when a validation split is held out of the training split (None:
    # all num_samples): a per-sample memory draws its negatives among these only.
    train_indices: torch.Tensor | None = None


class Distiller(nn.Module, ABC):
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    teacher_signals: ClassVar[tuple[str, ...]] = ()
    student_taps: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type] = NoOptions  # a subclass declares its own `@dataclass(frozen=True) class Options`
    # Why a store cannot serve this method although it can hold each of its signals ("" when it can).
    store_refusal: ClassVar[str] = ""
    # Mixed images (--mix mixup/cutmix/ricap): "no", "optional" (a ground-truth loss that follows the mix) or
    # "required" (Aug-SL: the teacher labels the mixed image).
    mixes: ClassVar[str] = "no"
    # Derived from teacher_signals and store_refusal for every subclass (never set by hand): whether a label
    # store can provide every teacher signal (an online teacher always can).
    store_servable: ClassVar[bool] = True
    # False where the warm-up loss does not involve the student (a teacher-side module learns): the student
    # then runs in eval mode without gradient, so its BatchNorm statistics stay as initialised.
    student_learns_in_warmup: ClassVar[bool] = True
    needs_train_labels: ClassVar[bool] = False  # context.train_labels filled in
    warmup_lr_decay_at: ClassVar[tuple[float, ...]] = ()  # fractions of the warm-up (default: a constant lr)
    # Derived (never set by hand): what --compile does for the method. "graphs": the student is compiled and, on
    # a GPU, captured in CUDA graphs; "eager": it reads student features through forward hooks that it adds and
    # removes every step (models stay unmodified), which a compiled, captured student would not run.
    capture: ClassVar[str] = "graphs"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for retired in ("defaults", "store_servable"):
            if retired in vars(cls):
                raise TypeError(f"{cls.__name__} sets '{retired}': declare a nested Options dataclass and "
                                f"store_refusal instead (docs/methods.md)")
        check_declaration(cls.Options, cls.__name__)
        cls.store_servable = not cls.why_not_store()
        cls.capture = "eager" if cls.student_taps else "graphs"

    @classmethod
    def why_not_store(cls) -> str:
        """Why a label store cannot serve the method (one phrase); empty when it can serve every teacher signal."""
        maps = [s for s in cls.teacher_signals if not store_can_hold(s)]
        if maps:
            return (f"it needs {', '.join(maps)}, and a store holds only 1-D features "
                    f"({', '.join(FEATURE_PREFIX + t for t in STORABLE_TAPS)})")
        return cls.store_refusal

    @classmethod
    def option_defaults(cls) -> dict:
        """Option name -> default, typed, in declaration order."""
        return dataclasses.asdict(cls.Options())

    @classmethod
    def option_types(cls) -> dict[str, type]:
        return option_types(cls.Options)

    def __init__(self, context: DistillContext, **options):
        super().__init__()
        self.context = context
        self.options = build_options(self.Options, options, self.name)  # ValueError: one line, what is wrong
        self.epoch = 0

    def require_warmup(self, why: str) -> None:
        """Refuse warmup_epochs 0 for a method whose warm-up is essential (`why`)."""
        if self.options.warmup_epochs < 1:
            raise ValueError(f"--method {self.name} needs warmup_epochs a whole number >= 1 ({why}); "
                             f"got {self.options.warmup_epochs}")

    @property
    def warmup_epochs(self) -> int:
        """Epochs of a warm-up phase that runs before the recipe's epochs (option `warmup_epochs`)."""
        return getattr(self.options, "warmup_epochs", 0)

    @property
    def warmup_milestones(self) -> tuple[int, ...]:
        """Warm-up epochs where its lr drops by the recipe's gamma: `warmup_lr_decay_at` fractions of it."""
        n = self.warmup_epochs
        return tuple(sorted({m for f in self.warmup_lr_decay_at if 1 <= (m := round(n * f)) < n}))

    @property
    def warmup_lr(self) -> float | None:
        """The warm-up's base learning rate (option `warmup_lr`); None: the recipe's."""
        return getattr(self.options, "warmup_lr", None)

    @property
    def views_per_sample(self) -> int:
        """Views the sampler draws of each image per step, in blocks (copy k of all B images in rows [kB, (k+1)B),
        each copy its own crop, all copies of an image one flip); `expand` receives them. Default 1."""
        return 1

    def phases(self) -> Phases:
        """The training loop's one hook into a method's phases: its warm-up, with the warm-up's lr and lr drops."""
        return Phases(self.warmup_epochs, self.warmup_milestones, self.warmup_lr)

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

    def ce_plus(self, logits: torch.Tensor, batch, name: str, term: torch.Tensor) -> dict:
        """Most methods' form: ce_weight * CE(logits, the batch's ground truth) + <name>_weight * term, with both
        parts logged (the ground truth of mixed images is their parts' classes by share)."""
        ce = batch_cross_entropy(logits, batch)
        weight = getattr(self.options, f"{name}_weight")
        return {"loss": self.options.ce_weight * ce + weight * term, "ce": ce, name: term}

    @abstractmethod
    def forward(self, logits: torch.Tensor, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                batch) -> dict[str, torch.Tensor]:
        """Loss parts for one step; "loss" is the total that is minimised.

        logits: the student's [B, C]; student: its taps; teacher: the requested signals;
        batch: the step's `stages.batch.ViewedBatch` (labels, sample indices, views).
        """
