"""What proves a store unchanged: a sha256 per dataset and one digest over the root attributes.

Both are defined byte for byte in docs/label-store.md, so a reader without labelopt can check them.
The digest is a checksum, not a signature: it catches edited attributes (a temperature changed by
hand, a checksum overwritten), not a forger who recomputes it; `labels verify --teacher` is for that.
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

import numpy as np

from . import schema as S
from .schema import StoreError


def array_sha256(array: np.ndarray) -> str:
    """sha256 of an array's bytes in C order, little-endian (the `checksums` definition)."""
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    # hashlib reads the buffer in place and releases the GIL on it: no copy, no Python-level loop.
    return hashlib.sha256(little.reshape(-1).view(np.uint8)).hexdigest()


def dataset_sha256(dset) -> str:
    """The same digest, streamed chunk by chunk from an h5py dataset (constant memory; fletcher32 checked)."""
    digest = hashlib.sha256()
    if dset.ndim == 0:
        digest.update(np.ascontiguousarray(dset[()], dtype=dset.dtype.newbyteorder("<")).tobytes())
        return digest.hexdigest()
    # A chunk at a time; a contiguous-layout dataset in pieces of about 4 MiB rather than whole (a reader checks
    # a store larger than memory this way before reading it in place).
    row_bytes = max(1, dset.dtype.itemsize * int(np.prod(dset.shape[1:])))
    step = dset.chunks[0] if dset.chunks else max(1, (4 * 2 ** 20) // row_bytes)
    little = dset.dtype.newbyteorder("<")
    for start in range(0, dset.shape[0], step):
        # Unnamed, so each piece is freed before the next is read: one piece in memory at a time, not two.
        digest.update(np.ascontiguousarray(dset[start:start + step], dtype=little).reshape(-1).view(np.uint8))
    return digest.hexdigest()


def check_array(filename, path: str, array: np.ndarray, checksums: dict) -> np.ndarray:
    """The array, once its sha256 matches the recorded one; else a StoreError naming the dataset."""
    check_digest_of(filename, path, array_sha256(array), checksums)
    return array


def check_digest_of(filename, path: str, got: str, checksums: dict) -> None:
    want = checksums.get(path)
    if want is None:
        raise StoreError(f"{filename}: dataset /{path} has no entry in the checksums attribute; "
                         f"re-fetch the store or regenerate it")
    if got != want:
        raise StoreError(f"{filename}: dataset /{path} has sha256 {got[:16]}... but the store recorded "
                         f"{str(want)[:16]}...: its content changed after it was written; re-fetch the store "
                         f"or regenerate it")


# -- the root digest ----------------------------------------------------------------------------

def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _encode_value(name: str, value) -> bytes:
    """One attribute value: b"s" + length + UTF-8 for strings, b"i" + int64 for integers; nothing else."""
    if isinstance(value, str):
        data = value.encode("utf-8")
        return b"s" + _u64(len(data)) + data
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return b"i" + struct.pack("<q", int(value))
    raise ValueError(f"root attribute {name!r} is a {type(value).__name__}, which a label store never holds")


def root_digest(attrs: Mapping[str, object]) -> str:
    """sha256 over every root attribute but `digest`, by name (UTF-8 byte order), length-prefixed."""
    payload = bytearray()
    for name in sorted((n for n in attrs if n != S.ATTR_DIGEST), key=lambda n: n.encode("utf-8")):
        encoded = name.encode("utf-8")
        payload += _u64(len(encoded)) + encoded + _encode_value(name, attrs[name])
    return hashlib.sha256(bytes(payload)).hexdigest()


def check_root_digest(filename, attrs: Mapping[str, object]) -> str:
    """The recorded digest, once it matches the attributes; else a StoreError."""
    want = attrs.get(S.ATTR_DIGEST)
    if not isinstance(want, str):
        raise StoreError(f"{filename} has no {S.ATTR_DIGEST!r} attribute over its attributes; regenerate the store")
    try:
        got = root_digest(attrs)
    except ValueError as exc:
        raise StoreError(f"{filename}: {exc}; regenerate the store")
    if got != want:
        raise StoreError(f"{filename}: its root attributes do not match their recorded digest (an attribute was "
                         f"edited after the store was written); re-fetch the store or regenerate it")
    return want
