"""Stage-two methods, by name. Adding one is a file here, decorated with @register_method, its import below, and
its name in stages/names.py (which the CLI reads without importing torch).

The imports register the methods in this order, which is the order `labelopt methods` and `--help` list them.
"""
from __future__ import annotations

from ...store.schema import FEATURE_PREFIX, SIGNAL_LOGITS, SIGNAL_TARGETS
from ..names import METHOD_NAMES
from .base import DistillContext, Distiller
from .registry import DISTILLERS, UnknownMethodError, get_distiller, register_method
from . import vanilla, ls, sl, sl_kd, kd, aug_sl  # noqa: E401,F401  (label methods)
from . import fitnet, at, sp, vid, rkd, pkt, ab, ft, crd, kdss  # noqa: E401,F401  (distillation baselines)

if tuple(DISTILLERS) != METHOD_NAMES:
    raise ImportError(f"stages/names.py's METHOD_NAMES ({', '.join(METHOD_NAMES)}) must name the registered methods "
                      f"in their order ({', '.join(DISTILLERS)})")

__all__ = ["DISTILLERS", "DistillContext", "Distiller", "FEATURE_PREFIX", "SIGNAL_LOGITS", "SIGNAL_TARGETS",
           "UnknownMethodError", "get_distiller", "register_method"]
