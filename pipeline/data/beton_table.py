"""The per-sample table of a .beton as labelopt writes it (fields image, label, index), read with numpy alone.

Importing FFCV costs a process 2-3 s (its image field builds a numba dictionary at import, which compiles), so the
paths that only read a .beton's table or its raw pixels do not import it. The layout below is FFCV's file format,
version 2: a header, one descriptor per field, then one aligned record per sample (each field's metadata in
field order), the samples' data in pages, and the allocation table at the end. tests/test_prepare.py checks it
against FFCV's own Reader.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

FORMAT_VERSION = 2
HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"),
                   ("alloc_table_ptr", "<u8")], align=True)
FIELD_DESCRIPTOR = np.dtype([("type_id", "u1"), ("name", ("u1", 16)), ("arguments", ("u1", 1024))], align=True)
# An RGB image's metadata: how it is stored (RAW_MODE or JPEG), its size, and where its bytes start in the file.
IMAGE_RECORD = np.dtype([("mode", "u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
SAMPLE_RECORD = np.dtype([("image", IMAGE_RECORD), ("label", "<i8"), ("index", "<i8")], align=True)
FIELDS = (("image", 2), ("label", 1), ("index", 1))  # (name, FFCV's type id: 2 an RGB image, 1 an integer)
RAW_MODE = 1  # FFCV's mode of an image stored as its pixels (0: a JPEG)


@dataclass(frozen=True)
class BetonTable:
    path: str
    file: np.ndarray  # uint8, the whole file, memory-mapped read-only
    samples: np.ndarray  # SAMPLE_RECORD [num_samples], in the file's order

    @property
    def num_samples(self) -> int:
        return len(self.samples)


def read_beton_table(path: Path | str) -> BetonTable:
    """The file's per-sample table, checked to be the layout labelopt writes; one line naming the file if not."""
    path = str(path)
    file = _read_only_map(path)
    header = _records(file, HEADER, 0, 1, path)[0]
    if int(header["version"]) != FORMAT_VERSION or int(header["num_fields"]) != len(FIELDS):
        _refuse(path, f"format version {int(header['version'])} with {int(header['num_fields'])} fields")
    fields = _records(file, FIELD_DESCRIPTOR, HEADER.itemsize, len(FIELDS), path)
    found = tuple((bytes(f["name"]).rstrip(b"\0").decode("ascii", "replace"), int(f["type_id"])) for f in fields)
    if found != FIELDS:
        _refuse(path, f"the fields {found}")
    count = int(header["num_samples"])
    samples = _records(file, SAMPLE_RECORD, HEADER.itemsize + fields.nbytes, count, path)
    return BetonTable(path, file, samples)


def _read_only_map(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid once the file is closed
    except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
        raise UserError(f"{path} cannot be read ({exc}); prepare the dataset again with `labelopt prepare`") from None
    return np.frombuffer(mapped, dtype=np.uint8)


def _records(file: np.ndarray, dtype: np.dtype, offset: int, count: int, path: str) -> np.ndarray:
    if offset + count * dtype.itemsize > len(file):
        raise UserError(f"{path} is cut short: it ends inside its table of samples; prepare the dataset again "
                        f"with `labelopt prepare`")
    return np.frombuffer(file, dtype=dtype, count=count, offset=offset)


def _refuse(path: str, what: str):
    raise UserError(f"{path} is not a .beton labelopt wrote: it has {what}, not FFCV's format {FORMAT_VERSION} "
                    f"with the fields {[name for name, _ in FIELDS]}; prepare the dataset again with "
                    f"`labelopt prepare`")
