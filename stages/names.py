"""The names `--method` takes, without importing the methods (or torch): the CLI lists them in --help and checks a
value against them before anything heavy loads.

A stage-two method registers itself (@register_method in its file under distillers/); its name is declared here
too, in listing order, and importing stages.distillers fails when the two disagree. A stage-one labeler is a line
of labelers.py's LABELERS and one here (tests/test_cli_help.py compares them).
"""
from __future__ import annotations

import sys

# train-student --method: distillers' registration order, which `labelopt methods` lists
METHOD_NAMES = ("vanilla", "ls", "sl", "sl-kd", "kd", "aug-sl", "aug-sl-kd",
                "fitnet", "at", "sp", "vid", "rkd", "pkt", "ab", "ft", "crd", "crd+kd", "kdss")
# generate-labels --method: labelers.LABELERS
LABELER_NAMES = ("sl", "sl-ens", "sl-enc", "random")


def method_names() -> list[str]:
    """METHOD_NAMES, then any method registered later by code that loaded the registry itself (a plugin, a test). The
    registry is read only when it is already imported, so this never imports torch."""
    registry = sys.modules.get(f"{__package__}.distillers.registry")
    later = [name for name in registry.DISTILLERS if name not in METHOD_NAMES] if registry is not None else []
    return [*METHOD_NAMES, *later]


def labeler_names() -> list[str]:
    return list(LABELER_NAMES)
