"""The stage-two methods by name, filled by the `@register_method` decorator of each method file."""
from __future__ import annotations

import inspect

from .base import Distiller

DISTILLERS: dict[str, type[Distiller]] = {}  # registration order is the listing order (`labelopt methods`)


class UnknownMethodError(ValueError):
    pass


def register_method(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: make a Distiller subclass a `--method` under its `name`."""
    if not (isinstance(cls, type) and issubclass(cls, Distiller)) or inspect.isabstract(cls):
        raise TypeError(f"@register_method takes a concrete Distiller subclass, got {cls!r}")
    if not cls.name or not cls.summary:
        raise TypeError(f"{cls.__name__} needs a `name` and a one-line `summary` to be registered")
    if cls.name in DISTILLERS and DISTILLERS[cls.name] is not cls:
        raise ValueError(f"--method {cls.name} is registered twice ({DISTILLERS[cls.name].__name__} and "
                         f"{cls.__name__})")
    DISTILLERS[cls.name] = cls
    return cls


def get_distiller(name: str) -> type[Distiller]:
    try:
        return DISTILLERS[name]
    except KeyError:
        raise UnknownMethodError(f"unknown --method '{name}'; known: {', '.join(DISTILLERS)}") from None
