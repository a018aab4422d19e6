"""The label store: soft labels written once by a teacher, read many times by students.

Every name here is imported from its module (and h5py with the reader and writer) when it is first used, so a
module of the package that needs no h5py (files.py: the atomic write and the lock, which `labelopt train` uses)
loads without it.
"""
from importlib import import_module

_LAZY = {
    "FORMAT": "schema",
    "SCHEMA_VERSION": "schema",
    "StoreError": "schema",
    "LabelStore": "reader",
    "StoreLayout": "layout",
    "StoreWriter": "writer",
    "combine": "ensemble",
    "file_sha256": "checksums",
    "verify": "verification",
}

__all__ = [*_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
