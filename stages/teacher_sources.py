"""Teacher sources: where a distiller's teacher signals come from during stage two.

A distiller asks for signals by name (`targets`, `logits`, `features:<tap>`); a
store-backed source gathers them for each sample's (index, view), an online
source runs the teachers on the viewed images. The training loop sees only the
`TeacherSource` interface, so stored labels and online distillation are one code path.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch

from ..store import LabelStore
from .batch import ViewedBatch
from ..store.schema import FEATURE_PREFIX, SIGNAL_LOGITS, SIGNAL_TARGETS
from .labelers import LabelRequest


ENSEMBLE_METHODS = ("sl-ens", "combine")  # generator methods whose stores hold an ensemble's labels


class TeacherSource(ABC):
    kind: str
    target_temperature: float | None  # the temperature of the `targets` signal

    @abstractmethod
    def missing(self, signal: str) -> str | None:
        """None when the source provides `signal`, else why not and how to fix it."""

    @abstractmethod
    def signals(self, batch: ViewedBatch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """float32 tensors on the batch's device, one per requested signal."""

    @abstractmethod
    def describe(self) -> dict:
        """What the run's config records about the source."""


class StoreSource(TeacherSource):
    kind = "store"

    def __init__(self, store: LabelStore, temperature: float | None):
        self.store = store
        self.target_temperature = temperature
        self.names: tuple[str, ...] = ()

    def missing(self, signal):
        if signal == SIGNAL_LOGITS and self.store.generator.get("method") in ENSEMBLE_METHODS:
            return (f"store {self.store.path} is an ensemble's ({self.store.generator['method']}): it holds soft "
                    f"labels only, since the mean of its members' logits is not its label; distil from it with sl "
                    f"or sl-kd, or run kd from one member's store or --teacher")
        try:
            self.store.require(signal)
        except (ValueError, KeyError) as exc:
            return str(exc)
        return None

    def load(self, names: Sequence[str]) -> None:
        """Ready the store for `names`: the signals `rows` gathers from now on."""
        self.names = tuple(names)
        self.store.load(self.names)

    def rows(self, indices: torch.Tensor, views: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """float32 rows of every loaded signal for keys (indices[i], views[i]), on the CPU: the batch loader
        gathers them for a step's drawn views, ahead of the step."""
        return {name: self.store.gather(indices, views, name) for name in self.names}

    def signals(self, batch, names):
        missing = [name for name in names if name not in batch.teacher]
        if missing:
            raise ValueError(f"the batch carries no store rows for {', '.join(missing)}: the batch loader gathers "
                             f"them (pass StoreSource.rows as its teacher_rows)")
        return {name: batch.teacher[name] for name in names}

    def describe(self):
        s = self.store
        return {"kind": self.kind, "path": str(s.path), "checksums": s.checksums, "generator": s.generator,
                "views": s.views, "temperature": self.target_temperature}


class OnlineSource(TeacherSource):
    """Teachers run on every batch: `targets` come from the same labeler stage one uses."""

    kind = "online"

    def __init__(self, labeler, temperature: float):
        self.labeler = labeler
        self.target_temperature = temperature

    @property
    def teachers(self):
        return self.labeler.teachers

    def missing(self, signal):
        if signal == SIGNAL_TARGETS:
            return None
        if signal == SIGNAL_LOGITS:
            if len(self.teachers) > 1:
                return ("logits need a single --teacher (the mean of an ensemble's logits is not its label); "
                        "distil from an ensemble with sl or sl-kd")
            return None
        if signal.startswith(FEATURE_PREFIX):
            if len(self.teachers) > 1:
                return f"{signal} needs a single --teacher (an ensemble has no one feature space)"
            return None
        return f"unknown teacher signal '{signal}'"

    def signals(self, batch, names):
        taps = tuple(n[len(FEATURE_PREFIX):] for n in names if n.startswith(FEATURE_PREFIX))
        want_labels = SIGNAL_TARGETS in names or SIGNAL_LOGITS in names
        out: dict[str, torch.Tensor] = {}
        if want_labels:
            result = self.labeler(LabelRequest(batch.images, batch.indices, batch.labels, taps))
            out[SIGNAL_TARGETS] = result.probs.float()
            if result.logits is not None:
                out[SIGNAL_LOGITS] = result.logits.float()
            features = result.features
        else:
            _, features = self.labeler.teacher_outputs(self.teachers[0], LabelRequest(batch.images, batch.indices,
                                                                                        batch.labels, taps))
        out.update({FEATURE_PREFIX + tap: features[tap].float() for tap in taps})
        return {name: out[name] for name in names}

    def describe(self):
        return {"kind": self.kind, "temperature": self.target_temperature,
                "teachers": [t.identity for t in self.teachers]}
