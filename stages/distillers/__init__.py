"""Stage-two methods, by name. Adding one is a file here and a line in DISTILLERS."""
from __future__ import annotations

from .base import FEATURE_PREFIX, SIGNAL_LOGITS, SIGNAL_TARGETS, DistillContext, Distiller
from .ab import ActivationBoundaries
from .at import AttentionTransfer
from .crd import ContrastiveRepresentation, CRDWithKD
from .fitnet import FitNet
from .ft import FactorTransfer
from .kd import KnowledgeDistillation
from .kdss import SelfSupervisedKD
from .ls import LabelSmoothing
from .pkt import ProbabilisticKT
from .rkd import RelationalKD
from .sl import SoftLabels
from .sl_kd import SoftLabelsKD
from .sp import SimilarityPreserving
from .vanilla import Vanilla
from .vid import VariationalInformation

DISTILLERS: dict[str, type[Distiller]] = {cls.name: cls for cls in (
    Vanilla, LabelSmoothing, SoftLabels, SoftLabelsKD, KnowledgeDistillation,
    FitNet, AttentionTransfer, SimilarityPreserving, VariationalInformation, RelationalKD, ProbabilisticKT,
    ActivationBoundaries, FactorTransfer, ContrastiveRepresentation, CRDWithKD, SelfSupervisedKD,
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
