"""A method's own training phases: a warm-up that runs before the recipe's epochs, with its own base lr and lr
drops within it (AB and FT train their connectors first, KDSS its head). The training loop asks a method for
its phases through one hook (`Distiller.phases`) and builds the schedule from them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phases:
    warmup_epochs: int = 0
    warmup_milestones: tuple[int, ...] = ()  # warm-up epochs at which the lr is multiplied by the recipe's gamma
    warmup_lr: float | None = None  # the warm-up's base lr; None: the recipe's --lr

    def phase_of(self, epoch: int) -> str:
        return "warmup" if epoch < self.warmup_epochs else "train"

    def record(self) -> dict:
        """What config.json records of them (the keys runs have always carried)."""
        return {"warmup_epochs": self.warmup_epochs, "warmup_milestones": list(self.warmup_milestones),
                "warmup_lr": self.warmup_lr}


NO_PHASES = Phases()
