"""Unpickling user-supplied CIFAR files without letting them run code.

A pickle can name any importable callable and have it called on load, so the
unpickler below resolves only the handful of globals an official CIFAR batch
(or our fakes, written by Python 3 at protocol 2) actually references.
"""
from __future__ import annotations

import _codecs
import pickle
from pathlib import Path

import numpy as np

from ...errors import UserError

try:  # numpy >= 2 keeps the array internals in numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

# (module, name) as written in the pickle -> the object it may resolve to.
# Both numpy homes map to the already-imported function, so the deprecated
# numpy.core shim is never imported on numpy 2.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,  # how Python 3 writes bytes at protocol 2
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose find_class admits only the globals in `_ALLOWED_GLOBALS`."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")  # the official files were written by Python 2
        self._path = path

    def find_class(self, module, name):
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise UserError(f"refusing to unpickle {module}.{name} from {self._path}: not an official CIFAR batch")
        return found

    def persistent_load(self, pid):
        raise UserError(f"refusing to unpickle a persistent id from {self._path}: not an official CIFAR batch")


def safe_load(path: Path):
    """The object pickled in `path`; refusals and corruption become one-line UserErrors."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return RestrictedUnpickler(f, path).load()
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception:
        # EOFError, UnpicklingError, ValueError, MemoryError, ... all mean the bytes are bad.
        raise UserError(f"{path} is truncated or corrupt; re-download/extract it") from None
