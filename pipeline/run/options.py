"""A training run's options: what `labelopt train` takes (train-student extends them), with their checks."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..data.datasets import PreparedDataset, open_dataset
from ..errors import UserError
from ..limits import check_all
from ..views.policies import default_augment, view_policy_names
from .schedules import check_schedule_name, resolve_milestones

# Options that may differ between a run and its --resume without changing the result.
# --compile changes how the step runs, not what it computes (within float rounding).
RESUME_FREE_OPTIONS = {"out", "resume", "overwrite", "device", "num_workers", "compile", "expect_digest"}


@dataclass
class TrainOptions:
    data: str
    arch: str
    out: str
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: tuple[int, ...] | None = None
    gamma: float = 0.1
    label_smoothing: float = 0.0
    augment: str = "auto"
    seed: int = 0
    order_seed: int | None = None  # the data order's seed (None: seed); a pack's members share the pack's
    val_fraction: float = 0.0  # each class's share of the training split held out to choose best.pt (0: none)
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False  # torch.compile the student's forward and backward (CUDA graphs where they apply)
    resolution: int | None = None  # JPEG datasets: the side models train and are evaluated at (None: 224)
    num_workers: int | None = None
    resume: bool = False
    overwrite: bool = False


NUMERIC_OPTIONS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "gamma", "seed", "num_workers",
                   "label_smoothing", "resolution", "order_seed", "val_fraction")


def open_training_data(options: TrainOptions) -> PreparedDataset:
    """The prepared dataset of --data as the run's models see it (at --resolution)."""
    check_all(options, ("resolution",))
    return open_dataset(options.data).at_resolution(options.resolution)


def resolve_options(options: TrainOptions, data: PreparedDataset) -> TrainOptions:
    check_all(options, NUMERIC_OPTIONS)
    if options.resume and options.overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: pass only one")
    check_schedule_name(options.schedule)
    augment = default_augment(data) if options.augment == "auto" else options.augment
    if augment not in view_policy_names():
        raise UserError(f"unknown --augment '{augment}'; known: auto, {', '.join(view_policy_names())}")
    milestones = resolve_milestones(options.epochs, tuple(options.milestones) if options.milestones else None)
    return dataclasses.replace(options, augment=augment, milestones=milestones)
