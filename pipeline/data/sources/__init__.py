"""Dataset sources: each dataset's official on-disk files -> per-sample access.

A source reads what is on disk lazily (or keeps one compact array) so that a
writer can fork worker processes that call `read_image` on the inherited object.
Loaders take `(root, *, include_unlabeled)` and return a `DatasetSource`;
`load_source` picks one from the `SOURCES` registry by name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ...errors import UserError
from .base import DatasetSource, SplitSource, pixel_fingerprint  # noqa: F401  (the package's public types)
from .cifar import load_cifar10, load_cifar100
from .digits import load_digits_source
from .imagefolder import load_imagenet
from .stl10 import load_stl10

SOURCES: dict[str, Callable[..., DatasetSource]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "stl10": load_stl10,
    "imagenet": load_imagenet,
    "digits": load_digits_source,
}


def source_names() -> list[str]:
    return sorted(SOURCES)


def load_source(name: str, root: Path | str | None, *, include_unlabeled: bool = False) -> DatasetSource:
    """The named dataset read from `root` (ignored by datasets embedded in the package)."""
    loader = SOURCES.get(name)
    if loader is None:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(source_names())}")
    return loader(root, include_unlabeled=include_unlabeled)
