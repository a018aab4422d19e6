"""What proves a store unchanged: a sha256 per dataset and one digest over the root attributes (and the sha256 of a
whole file, which a store records of its teachers' checkpoints and a combined store of its members).

Both are defined byte for byte in docs/label-store.md, so a reader without labelopt can check them.
The digest is a checksum, not a signature: it catches edited attributes (a temperature changed by
hand, a checksum overwritten), not a forger who recomputes it; a pin of the digest (`--expect-digest`, check_pin)
or `labels verify --teacher` is for that. The same passes that hash a dataset refuse values that are not finite.
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

import numpy as np

from . import schema as S
from .schema import StoreError


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def array_sha256(array: np.ndarray) -> str:
    """sha256 of an array's bytes in C order, little-endian (the `checksums` definition)."""
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    # hashlib reads the buffer in place and releases the GIL on it: no copy, no Python-level loop.
    return hashlib.sha256(little.reshape(-1).view(np.uint8)).hexdigest()


def scan_dataset(dset) -> tuple[str, int | None]:
    """(the same digest, first row holding a value that is not finite or None), in one pass streamed chunk by
    chunk from an h5py dataset: constant memory whatever its size; fletcher32 checked."""
    digest = hashlib.sha256()
    if dset.ndim == 0:
        value = dset[()]
        digest.update(np.ascontiguousarray(value, dtype=dset.dtype.newbyteorder("<")).tobytes())
        return digest.hexdigest(), first_non_finite(np.asarray(value).reshape(1))
    # A chunk at a time; a contiguous-layout dataset in pieces of about 4 MiB rather than whole (a reader checks
    # a store larger than memory this way before reading it in place).
    row_bytes = max(1, dset.dtype.itemsize * int(np.prod(dset.shape[1:])))
    step = dset.chunks[0] if dset.chunks else max(1, (4 * 2 ** 20) // row_bytes)
    little = dset.dtype.newbyteorder("<")
    bad = None
    for start in range(0, dset.shape[0], step):
        piece = np.ascontiguousarray(dset[start:start + step], dtype=little)
        if bad is None:
            row = first_non_finite(piece)
            bad = None if row is None else start + row
        digest.update(piece.reshape(-1).view(np.uint8))
        del piece  # one piece in memory at a time, not two
    return digest.hexdigest(), bad


PIECE_VALUES = 1 << 24  # values tested per step of first_non_finite: its temporary stays at 16 MB


def first_non_finite(array: np.ndarray) -> int | None:
    """The first row (index on the first axis) holding a NaN or an infinity, else None. Only float values are
    looked at: a top-k entry's values, not its class ids; integer datasets never. In pieces, so the test's
    temporary stays small whatever the array's size."""
    values = array[S.TOPK_FIELDS[1]] if array.dtype.fields is not None and S.TOPK_FIELDS[1] in array.dtype.fields \
        else array
    if values.dtype.kind != "f" or values.size == 0:
        return None
    if values.ndim == 0:
        values = values.reshape(1)
    per_row = max(1, values.size // len(values))
    step = max(1, PIECE_VALUES // per_row)
    for start in range(0, len(values), step):
        finite = np.isfinite(values[start:start + step]).reshape(-1, per_row).all(axis=1)
        if not finite.all():
            return start + int(np.argmin(finite))
    return None


def check_finite(filename, path: str, bad_row: int | None) -> None:
    if bad_row is not None:
        raise StoreError(f"{filename}: dataset /{path} holds a value that is not finite (NaN or inf) at sample "
                         f"{bad_row}: the teacher that made it gave no usable label there; regenerate the store "
                         f"from a sound checkpoint")


def check_array(filename, path: str, array: np.ndarray, checksums: dict) -> np.ndarray:
    """The array, once its sha256 matches the recorded one and its values are finite; else a StoreError naming
    the dataset."""
    check_digest_of(filename, path, array_sha256(array), checksums)
    check_finite(filename, path, first_non_finite(array))
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


def pinned_digest(expected) -> str | None:
    """A pin (--expect-digest, a recipe's expect_digest) as 64 lower-case hex digits; None when there is none."""
    if expected is None:
        return None
    text = str(expected).strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise StoreError(f"--expect-digest {expected!r} is not a store's root digest (64 hex digits); copy it from "
                         f"the store's card or labelopt labels inspect")
    return text


def check_pin(filename, digest: str, expected) -> None:
    """The store's root digest against a pin; a StoreError naming both when they differ."""
    want = pinned_digest(expected)
    if want is not None and digest != want:
        raise StoreError(f"{filename}: its root digest is {digest[:16]}..., not the pinned {want[:16]}...: this is "
                         f"not the store that was pinned (another version, or an edited copy); fetch the pinned "
                         f"store again or update the pin")


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
