"""Learning-rate schedules as pure functions of (epoch, step): nothing to save, resume is exact."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError

# The standard CIFAR recipe decays at 150/180/210 of 240 epochs; shorter runs keep the proportions.
DEFAULT_MILESTONE_FRACTIONS = (150 / 240, 180 / 240, 210 / 240)


@dataclass(frozen=True)
class Schedule:
    name: str
    base_lr: float
    epochs: int
    steps_per_epoch: int
    milestones: tuple[int, ...]
    gamma: float
    hold_epochs: int = 0  # a method's warm-up phase: base lr, then the schedule starts from its epoch 0
    hold_milestones: tuple[int, ...] = ()  # warm-up epochs at which its lr is multiplied by gamma
    hold_lr: float | None = None  # the warm-up's own base lr (FT: the benchmark's 0.01); None: base_lr

    def lr(self, epoch: int, step: int) -> float:
        if epoch < self.hold_epochs:
            base = self.base_lr if self.hold_lr is None else self.hold_lr
            return base * self.gamma ** sum(epoch >= m for m in self.hold_milestones)
        return SCHEDULES[self.name](self, epoch - self.hold_epochs, step)


def _step(s: Schedule, epoch: int, step: int) -> float:
    return s.base_lr * s.gamma ** sum(epoch >= m for m in s.milestones)


def _cosine(s: Schedule, epoch: int, step: int) -> float:
    progress = (epoch * s.steps_per_epoch + step) / max(1, s.epochs * s.steps_per_epoch)
    return 0.5 * s.base_lr * (1.0 + math.cos(math.pi * progress))


SCHEDULES = {"step": _step, "cosine": _cosine}


def schedule_names() -> list[str]:
    return list(SCHEDULES)


def default_milestones(epochs: int) -> tuple[int, ...]:
    """The recipe's decay points scaled to `epochs`: rounded, kept inside the run (1 .. epochs-1), repeats merged,
    so the result is what --milestones accepts (a 3-epoch run decays once, at 2; a 1-epoch run never)."""
    scaled = {min(max(1, round(epochs * f)), epochs - 1) for f in DEFAULT_MILESTONE_FRACTIONS}
    return tuple(sorted(m for m in scaled if m >= 1))


def resolve_milestones(epochs: int, milestones: tuple[int, ...] | None) -> tuple[int, ...]:
    if not milestones:
        return default_milestones(epochs)
    if any(m < 1 or m >= epochs for m in milestones) or any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise UserError(f"--milestones {','.join(map(str, milestones))} must be strictly increasing epochs "
                        f"between 1 and {epochs - 1}")
    return tuple(milestones)


def check_schedule_name(name: str) -> None:
    if name not in SCHEDULES:
        raise UserError(f"unknown schedule '{name}'; known: {', '.join(sorted(SCHEDULES))}")
