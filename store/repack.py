"""The same store in another layout: compressed to share it, contiguous to train from it without loading it.

Only the storage changes. Every dataset keeps its bytes and every root attribute its value, so the checksums,
the digest and anything that names the store's content (a card, a combined store's member record) stay true.
Each dataset is hashed as it is copied and must match its recorded sha256: a damaged source is refused, never
copied into a store that would then look intact.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from .checksums import check_digest_of, check_finite, first_non_finite
from .chunks import chunk_workers, write_rows
from .files import check_free_space, free_mib, is_disk_full
from . import schema as S
from .reader import LabelStore
from .schema import StoreError
from .validation import all_datasets, open_h5, root_attrs
from .writer import file_options, storage_options

PIECE_BYTES = 64 * 2 ** 20  # rows copied per step: constant memory whatever the store's size
DEFAULT_CHUNK_ROWS = 256


def repack(path: Path, out: Path, layout: str, *, overwrite: bool = False, expect_digest: str | None = None
           ) -> Path:
    """Write `path` to `out` in `layout` (compressed or contiguous); returns `out`. `expect_digest`: a pin of the
    store's root digest."""
    path, out = Path(path), Path(out)
    store = LabelStore.open(path, expect_digest)  # the whole validation first: structure, digest, shapes
    if out.resolve() == path.resolve():
        raise StoreError(f"--out {out} is the store itself; repack writes a new file: choose another --out")
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists; pass --overwrite to replace it")
    if layout not in S.LAYOUTS:
        raise StoreError(f"--layout must be one of {sorted(S.LAYOUTS)}, got {layout!r}")
    compression = S.LAYOUTS[layout]
    check_free_space(out.parent, os.path.getsize(path) if compression != "none" else _raw_bytes(path),
                     f"repacking into {out.name}", error=StoreError)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.h5")
    try:
        with open_h5(path) as src, h5py.File(tmp, "w", **file_options(compression)) as dst, \
                ThreadPoolExecutor(chunk_workers(), thread_name_prefix="labelopt-chunks") as pool:
            for name, value in root_attrs(src).items():
                dst.attrs[name] = value
            for name, dset in all_datasets(src).items():
                _copy_dataset(dset, dst, name, compression, store.checksums, path, pool)
        os.replace(tmp, out)
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc):
            raise
        raise StoreError(f"disk full while repacking into {out} ({free_mib(out.parent):.1f} MiB free after "
                         f"cleaning up); free space or choose another --out") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return out


def _raw_bytes(path: Path) -> int:
    with open_h5(path) as f:
        return sum(int(d.size) * d.dtype.itemsize for d in all_datasets(f).values())


def _copy_dataset(dset: h5py.Dataset, dst: h5py.File, name: str, compression: str, checksums: dict,
                  source: Path, pool: ThreadPoolExecutor) -> None:
    chunk_rows = dset.chunks[0] if dset.chunks else min(DEFAULT_CHUNK_ROWS, dset.shape[0])
    out = dst.create_dataset(name, shape=dset.shape, dtype=dset.dtype,
                             **storage_options(compression, dset.shape[1:], chunk_rows, dset.dtype))
    row_bytes = max(1, dset.dtype.itemsize * int(np.prod(dset.shape[1:])))
    step = max(chunk_rows, PIECE_BYTES // row_bytes // chunk_rows * chunk_rows)
    digest, bad_row = hashlib.sha256(), None
    for start in tqdm(range(0, dset.shape[0], step), desc=f"repacking /{name}", unit="piece",
                      disable=not sys.stderr.isatty(), leave=False):
        try:
            piece = np.ascontiguousarray(dset[start:start + step])
        except OSError as exc:
            raise StoreError(f"{source}: dataset /{name} failed to read ({exc}); the file is corrupt: "
                             f"re-fetch or regenerate it") from None
        digest.update(piece.reshape(-1).view(np.uint8))
        if bad_row is None:
            row = first_non_finite(piece)
            bad_row = None if row is None else start + row
        write_rows(out, start, piece, chunk_rows, compression, pool)  # a gzip store's chunks on every core
    check_digest_of(source, name, digest.hexdigest(), checksums)
    check_finite(source, name, bad_row)
