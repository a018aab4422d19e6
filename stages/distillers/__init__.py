"""Stage-two methods, by name. Adding one is a file here and a line in DISTILLERS."""
from __future__ import annotations

from .base import FEATURE_PREFIX, SIGNAL_LOGITS, SIGNAL_TARGETS, DistillContext, Distiller
from .kd import KnowledgeDistillation
from .ls import LabelSmoothing
from .sl import SoftLabels
from .sl_kd import SoftLabelsKD
from .vanilla import Vanilla

DISTILLERS: dict[str, type[Distiller]] = {cls.name: cls for cls in (
    Vanilla, LabelSmoothing, SoftLabels, SoftLabelsKD, KnowledgeDistillation,
)}


class UnknownMethodError(ValueError):
    pass


def method_names() -> list[str]:
    return list(DISTILLERS)


def get_distiller(name: str) -> type[Distiller]:
    try:
        return DISTILLERS[name]
    except KeyError:
        raise UnknownMethodError(f"unknown --method '{name}'; known: {', '.join(DISTILLERS)}") from None


__all__ = ["DISTILLERS", "DistillContext", "Distiller", "FEATURE_PREFIX", "SIGNAL_LOGITS", "SIGNAL_TARGETS",
           "UnknownMethodError", "get_distiller", "method_names"]
