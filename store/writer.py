"""Write a label store: blocks land as atomic .npz files, the HDF5 is assembled once at the end.

HDF5 files are not crash-safe mid-write, so nothing touches the final .h5 until `finish`.
A sibling folder `.<name>.partial/` holds `job.json` (what is being made) and one file per
finished block; a rerun after kill -9 redoes only the blocks with no file, and several
processes may fill different blocks of the same folder.
"""
from __future__ import annotations

import contextlib
import io
import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from . import schema as S
from .checksums import first_non_finite, root_digest
from .chunks import chunk_workers, gzip_chunk, made_ahead, write_chunk
from .files import check_free_space, free_mib, is_disk_full, write_bytes_atomic
from .contiguous import ALIGNMENT
from .layout import (JOB_FILE, JOB_KIND, SHARED_PARAMS_FILE, StoreLayout, block_keys, file_datasets,  # noqa: F401
                     file_rows, expect_array, normalise_header, npy_bytes, partial_dir, top_k)
from .schema import StoreError


def write_partial(path: Path, data) -> None:
    """A block, or the job record beside the blocks, under its name only when whole; a full disk says that the blocks
    already finished are kept."""
    write_bytes_atomic(path, data, error=StoreError, then="rerun the same command: finished blocks are kept")


def file_options(compression: str) -> dict:
    # Contiguous layout: every dataset starts on a page, so a reader's rows never straddle a misaligned start.
    return {"alignment_threshold": 1, "alignment_interval": ALIGNMENT} if compression == "none" else {}


def storage_options(compression: str, row_shape: tuple, chunk_rows: int, dtype=None) -> dict:
    """create_dataset's storage: chunks of `chunk_rows` rows, compressed and fletcher32-checked; or, for the
    contiguous layout ("none"), nothing at all (plain bytes at a fixed offset, which a reader reads in place).
    Top-k entries (a compound dtype: class ids beside values) are byte-shuffled before compression: interleaved,
    they gzip 15 % worse than schema 2's two datasets did; shuffled, 11 % better (store_scale's top-10 rows)."""
    if compression == "none":
        return {}
    options = {"chunks": (chunk_rows, *row_shape), "compression": compression, "fletcher32": True,
               "shuffle": dtype is not None and np.dtype(dtype).fields is not None}
    if compression == "gzip":
        options["compression_opts"] = S.GZIP_LEVEL
    return options


class StoreWriter:
    """Fill a store block by block (from one or several processes), then `finish` it once."""

    def __init__(self, path: Path, header: dict, layout: StoreLayout, *, overwrite: bool = False,
                 shared_view_params: np.ndarray | None = None, compression: str = "gzip",
                 clean_stale: bool = True):
        """clean_stale: the one writer of a job (rank 0 under torchrun) removes a killed run's temporary files and
        checks the free space; other ranks' writers must not, since the first may already be writing."""
        self.path = Path(path)
        self.layout = layout
        self.overwrite = overwrite
        if compression not in S.COMPRESSIONS:
            raise ValueError(f"compression must be one of {S.COMPRESSIONS}, got {compression!r}")
        self.compression = compression
        self.header = normalise_header(header, layout)
        self.shared_view_params = self._check_shared_params(shared_view_params)
        if self.path.exists() and not overwrite:
            raise StoreError(f"label store {self.path} already exists; pass --overwrite to replace it")
        self.partial = partial_dir(self.path)
        if clean_stale:
            self._remove_stale_temporaries()
            # Before the partial folder exists: a store that cannot fit leaves nothing behind.
            pending = sum(self.layout.block_bytes(b) for b in self.pending_blocks())
            check_free_space(self.path.parent, pending + self.layout.num_samples * self.layout.row_bytes(),
                             f"label store {self.path.name} (its blocks, then the assembled file)",
                             error=StoreError)
        self._open_partial()

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of a killed run: the lock on the output says no live writer owns them."""
        for stale in self.path.parent.glob(f".{self.path.name}.tmp-*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        for stale in self.partial.glob(".*.tmp-*"):
            with contextlib.suppress(OSError):
                stale.unlink()

    # -- setup -------------------------------------------------------------------------------

    def _check_shared_params(self, params):
        lay = self.layout
        if lay.per_sample_params:
            if params is not None:
                raise ValueError("shared_view_params given but the layout has per_sample_params=True")
            return None
        if params is None:
            if lay.param_size != 1:
                raise ValueError("shared_view_params [V, P] is required when param_size > 1")
            # An enumerated view space whose only parameter is the view id itself.
            return np.arange(lay.num_views, dtype=np.int64)[:, None]
        params = np.asarray(params)
        if params.shape != (lay.num_views, lay.param_size) or params.dtype.kind not in "iub":
            raise ValueError(f"shared_view_params must be integer [{lay.num_views}, {lay.param_size}], "
                             f"got {params.dtype} {params.shape}")
        return np.ascontiguousarray(params, dtype=S.DTYPES[S.VIEW_PARAMS])

    def _job(self) -> dict:
        shared = self.shared_view_params
        return {
            "kind": JOB_KIND,
            "header": self.header,
            "layout": asdict(self.layout),
            "shared_view_params_sha256": None if shared is None else hashlib.sha256(shared.tobytes()).hexdigest(),
        }

    def _open_partial(self) -> None:
        job = self._job()
        job_path = self.partial / JOB_FILE
        existing = self._read_job(job_path)
        if existing is not None and existing != job:
            if not self.overwrite:
                raise StoreError(
                    f"the partial store {self.partial} was made with other options; rerun the same command "
                    f"to resume it, or delete that folder / pass --overwrite to start over")
            # --overwrite means this job wins over a stale, different one.
            shutil.rmtree(self.partial, ignore_errors=True)
        # exist_ok: several ranks may race to create the folder; all of them win.
        self.partial.mkdir(parents=True, exist_ok=True)
        if existing != job:
            # Every rank writes identical bytes atomically, so the race is harmless.
            write_partial(job_path, json.dumps(job, sort_keys=True, indent=1).encode())
            if self.shared_view_params is not None:
                write_partial(self.partial / SHARED_PARAMS_FILE, npy_bytes(self.shared_view_params))

    @staticmethod
    def _read_job(job_path: Path) -> dict | None:
        try:
            return json.loads(job_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"unreadable": str(job_path)}  # differs from any job: reported as other options

    # -- blocks ------------------------------------------------------------------------------

    def block_file(self, b: int) -> Path:
        return self.partial / f"block-{b:06d}.npz"

    def pending_blocks(self) -> list[int]:
        return [b for b in range(self.layout.num_blocks()) if not self.block_file(b).exists()]

    def write_block(self, b: int, *, targets: np.ndarray | None = None, labels: np.ndarray,
                    logits: np.ndarray | None = None, features: dict | None = None,
                    view_params: np.ndarray | None = None, topk: tuple | None = None) -> None:
        """One block's rows. A top-k store takes either dense `targets` (their k largest kept) or `topk` =
        (class ids [rows, V, k], values [rows, V, k], largest first) made elsewhere, e.g. on the GPU."""
        lay = self.layout
        start, stop = lay.block_range(b)
        rows, v, c = stop - start, lay.num_views, lay.num_classes
        arrays: dict[str, np.ndarray] = {}

        if (targets is None) == (topk is None) or (topk is not None and not lay.topk):
            raise ValueError("write_block needs exactly one of targets and topk (topk only for a top-k layout)")
        if topk is not None:
            idx = expect_array(topk[0], "topk indices", (rows, v, lay.topk), "iu")
            if idx.min(initial=0) < 0 or idx.max(initial=0) >= c:
                raise ValueError(f"topk indices must be class ids in 0..{c - 1}")
            arrays["topk_indices"] = idx.astype(S.DTYPES[S.TOPK_INDICES])
            arrays["topk_values"] = expect_array(topk[1], "topk values", (rows, v, lay.topk),
                                                 "f").astype(S.DTYPES[S.TOPK_VALUES])
        elif lay.topk:
            targets = expect_array(targets, "targets", (rows, v, c), "f")
            idx, vals = top_k(targets.astype(np.float32, copy=False), lay.topk)
            arrays["topk_indices"] = idx
            arrays["topk_values"] = vals.astype(S.DTYPES[S.TOPK_VALUES])
        else:
            arrays["targets"] = expect_array(targets, "targets", (rows, v, c), "f").astype(S.DTYPES[S.TARGETS])
        arrays["labels"] = expect_array(labels, "labels", (rows,), "iu").astype(S.DTYPES[S.LABELS])

        if lay.logits != (logits is not None):
            raise ValueError(f"layout.logits={lay.logits} but logits {'missing' if logits is None else 'given'}")
        if logits is not None:
            arrays["logits"] = expect_array(logits, "logits", (rows, v, c), "f").astype(S.DTYPES[S.LOGITS])

        features = dict(features or {})
        if set(features) != set(lay.features):
            raise ValueError(f"features must have exactly the taps {sorted(lay.features)}, got {sorted(features)}")
        for tap, dim in lay.features.items():
            arrays[f"features.{tap}"] = expect_array(features[tap], f"features[{tap!r}]", (rows, v, dim),
                                                     "f").astype(S.FEATURE_DTYPE)

        if lay.per_sample_params != (view_params is not None):
            raise ValueError(f"layout.per_sample_params={lay.per_sample_params} but view_params "
                             f"{'missing' if view_params is None else 'given'}")
        if view_params is not None:
            arrays["view_params"] = expect_array(view_params, "view_params", (rows, v, lay.param_size),
                                                 "iub").astype(S.DTYPES[S.VIEW_PARAMS])

        self._check_finite(start, {"targets": targets, **arrays})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_partial(self.block_file(b), buf.getvalue())

    def _check_finite(self, start: int, arrays: dict) -> None:
        """A block whose labels, logits or features hold NaN or inf (or values past float16's range, stored as inf)
        is refused unwritten, naming the first sample and the teachers: no store holds a label that is no label."""
        for key, array in arrays.items():
            row = None if array is None else first_non_finite(np.asarray(array))
            if row is None:
                continue
            what = {"targets": "soft labels", "topk_values": "soft labels", "logits": "logits"}.get(
                key, f"{key.replace('.', ' ', 1)}")
            teachers = [str(t.get("checkpoint")) for t in self.header[S.ATTR_GENERATOR].get("teachers") or []
                        if isinstance(t, dict)]
            source = f"teacher {', '.join(teachers)}" if teachers else "their source"
            raise StoreError(f"{self.path}: the {what} of sample {start + row} are not finite (NaN or inf, or past "
                             f"float16's 65504): {source} gave no usable output there, so nothing of it is stored; "
                             f"label with a sound checkpoint")

    def _load_block(self, b: int) -> dict[str, np.ndarray]:
        start, stop = self.layout.block_range(b)
        path = self.block_file(b)
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {key: npz[key] for key in npz.files}
        except (OSError, ValueError) as exc:
            raise StoreError(f"block file {path} is unreadable ({exc}); delete it and rerun to redo that block")
        for key, (shape, dtype) in block_keys(self.layout).items():
            got = data.get(key)
            if got is None or got.shape != (stop - start, *shape) or got.dtype != dtype:
                raise StoreError(f"block file {path} does not match the job ({key}); delete it and rerun")
        return data

    # -- finish ------------------------------------------------------------------------------

    def finish(self) -> Path:
        missing = self.pending_blocks()
        if missing:
            raise StoreError(f"cannot finish {self.path}: {len(missing)} of {self.layout.num_blocks()} blocks "
                             f"are missing (first: {missing[0]}); rerun generation to fill them")
        if self.path.exists() and not self.overwrite:
            raise StoreError(f"label store {self.path} already exists; pass --overwrite to replace it")
        need = self.layout.num_samples * self.layout.row_bytes()
        check_free_space(self.path.parent, need, f"assembling {self.path.name}", error=StoreError)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}.h5")
        try:
            self._assemble(tmp)
            os.replace(tmp, self.path)
        except (OSError, RuntimeError) as exc:
            if not is_disk_full(exc):
                raise
            raise StoreError(f"disk full while assembling {self.path} (needs about {need / 2**20:.1f} MiB, "
                             f"{free_mib(self.path.parent):.1f} MiB free after cleaning up); free space and rerun "
                             f"the same command: the finished blocks in {self.partial} are kept") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        shutil.rmtree(self.partial, ignore_errors=True)
        return self.path

    def _assemble(self, tmp: Path) -> None:
        lay = self.layout
        chunk_rows = min(lay.block_rows, lay.num_samples)
        with h5py.File(tmp, "w", **file_options(self.compression)) as f:
            f.attrs[S.ATTR_FORMAT] = S.FORMAT
            f.attrs[S.ATTR_SCHEMA_VERSION] = np.int64(S.SCHEMA_VERSION)
            f.attrs[S.ATTR_CREATED_UTC] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            f.attrs[S.ATTR_LABELOPT_VERSION] = str(self.header[S.ATTR_LABELOPT_VERSION])
            for key in S.JSON_ATTRS:
                f.attrs[key] = json.dumps(self.header[key], sort_keys=True)
            dsets = {path: f.create_dataset(path, shape=(lay.num_samples, *shape), dtype=dtype,
                                            **storage_options(self.compression, shape, chunk_rows, dtype))
                     for path, (shape, dtype, _) in file_datasets(lay).items()}
            hashes = self._write_rows(dsets, chunk_rows)
            if self.shared_view_params is not None:
                params = self.shared_view_params
                f.create_dataset(S.VIEW_PARAMS, data=params,
                                 **storage_options(self.compression, params.shape[1:], len(params)))
                hashes[S.VIEW_PARAMS] = hashlib.sha256(params.tobytes())
            f.attrs[S.ATTR_CHECKSUMS] = json.dumps({k: h.hexdigest() for k, h in sorted(hashes.items())})
            # Last: a file that has this flag was written to the end ...
            f.attrs[S.ATTR_COMPLETE] = np.int64(1)
            # ... and the digest of every attribute, computed from what the file now holds.
            f.attrs[S.ATTR_DIGEST] = root_digest({name: f.attrs[name] for name in f.attrs.keys()})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())

    def _write_rows(self, dsets: dict, chunk_rows: int) -> dict:
        """Every block's rows into their datasets, in row order; returns each dataset's sha256 of its C-order bytes
        (blocks arrive in row order and each is C-contiguous, so hashing them in turn hashes the whole dataset).
        A gzip store's chunks (one per block) are compressed in threads ahead of the file (chunks.py); lzf's
        HDF5 compresses as it writes."""
        hashes = {path: hashlib.sha256() for path in dsets}
        datasets = file_datasets(self.layout)

        def loaded():  # in this thread: numpy reads a block's headers with ast, which is not thread-safe in 3.11
            for b in range(self.layout.num_blocks()):
                block = self._load_block(b)
                yield b, {path: file_rows(block, keys) for path, (_, _, keys) in datasets.items()}

        def compressed(item) -> dict:
            return {path: gzip_chunk(rows, chunk_rows) for path, rows in item[1].items()}

        blocks = made_ahead(loaded(), compressed, chunk_workers()) if self.compression == "gzip" else \
            ((item, None) for item in loaded())
        for (b, arrays), chunks in tqdm(blocks, total=self.layout.num_blocks(), desc=f"assembling {self.path.name}",
                                        unit="block", disable=not sys.stderr.isatty(), leave=False):
            start, stop = self.layout.block_range(b)
            for path, rows in arrays.items():
                if chunks is None:
                    dsets[path][start:stop] = rows
                else:
                    write_chunk(dsets[path], start, chunks[path])
                hashes[path].update(rows.reshape(-1).view(np.uint8))
        return hashes
