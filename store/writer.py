"""Write a label store: blocks land as atomic .npz files, the HDF5 is assembled once at the end.

HDF5 files are not crash-safe mid-write, so nothing touches the final .h5 until `finish`.
A sibling folder `.<name>.partial/` holds `job.json` (what is being made) and one file per
finished block; a rerun after kill -9 redoes only the blocks with no file, and several
processes may fill different blocks of the same folder.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from . import schema as S
from .integrity import root_digest
from .schema import StoreError

JOB_FILE = "job.json"
SHARED_PARAMS_FILE = "view-params.npy"
JOB_KIND = "labelopt.labels.partial"


@dataclass
class StoreLayout:
    """Shapes and optional signals of a store; also the unit of work (one block of rows)."""

    num_samples: int
    num_views: int
    num_classes: int
    topk: int | None = None
    logits: bool = False
    features: dict[str, int] = field(default_factory=dict)  # tap -> D
    param_size: int = 1
    per_sample_params: bool = False
    block_rows: int = 256  # rows per block = per progress unit = per HDF5 chunk

    def __post_init__(self):
        for name in ("num_samples", "num_views", "num_classes", "param_size", "block_rows"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"StoreLayout.{name} must be a positive int, got {value!r}")
            setattr(self, name, int(value))
        if self.topk is not None:
            if not 1 <= int(self.topk) <= self.num_classes:
                raise ValueError(f"StoreLayout.topk must be in 1..{self.num_classes}, got {self.topk}")
            self.topk = int(self.topk)
        self.logits = bool(self.logits)
        self.per_sample_params = bool(self.per_sample_params)
        taps = {}
        for tap, dim in dict(self.features).items():
            S.check_tap_name(tap)
            if int(dim) < 1:
                raise ValueError(f"feature tap {tap!r} needs a positive width, got {dim!r}")
            taps[tap] = int(dim)
        # Sorted so that job.json (and so resume detection) does not depend on dict order.
        self.features = dict(sorted(taps.items()))

    def num_blocks(self) -> int:
        return -(-self.num_samples // self.block_rows)

    def row_bytes(self) -> int:
        """Uncompressed bytes of one sample's row over every dataset (an upper bound for gzip's output)."""
        per_view = (self.topk * 6 if self.topk else self.num_classes * 2) + (self.num_classes * 2 if self.logits
                                                                               else 0)
        per_view += sum(self.features.values()) * 2 + (self.param_size * 8 if self.per_sample_params else 0)
        return self.num_views * per_view + 8

    def block_bytes(self, b: int) -> int:
        start, stop = self.block_range(b)
        return (stop - start) * self.row_bytes()

    def block_range(self, b: int) -> tuple[int, int]:
        if not 0 <= b < self.num_blocks():
            raise ValueError(f"block {b} is out of range 0..{self.num_blocks() - 1}")
        start = b * self.block_rows
        return start, min(self.num_samples, start + self.block_rows)


def partial_dir(path: Path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.partial"


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of the last axis, largest first: (indices int32, values float32)."""
    part = np.argpartition(-probs, k - 1, axis=-1)[..., :k]
    vals = np.take_along_axis(probs, part, axis=-1)
    # Sort inside the k so readers can truncate further by slicing.
    order = np.argsort(-vals, axis=-1, kind="stable")
    return (np.take_along_axis(part, order, axis=-1).astype(np.int32),
            np.take_along_axis(vals, order, axis=-1))


def write_bytes_atomic(target: Path, data, *, then: str = "rerun the same command: finished blocks are kept") -> None:
    """`data` under `target`'s name only when wholly written; a disk-full failure is one line ending in `then`."""
    # Unique temp name per process: two ranks writing the same file never share a temp.
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:  # a full disk or a kill: no half-written temporary stays behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise StoreError(f"disk full writing {target} ({len(data) / 2**20:.1f} MiB; "
                             f"{free_mib(target.parent):.1f} MiB free there); free space and {then}") from None
        raise


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def free_mib(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / 2 ** 20
    except OSError:
        return float("nan")


def check_free_space(folder: Path, need: int, what: str) -> None:
    """Refuse early, with the figures, when `folder` cannot hold `need` bytes (+1 % and 1 MiB of slack)."""
    free = shutil.disk_usage(folder).free
    if free < need * 1.01 + 2 ** 20:
        raise StoreError(f"not enough space for {what} in {folder}: needs about {need / 2**20:.1f} MiB, "
                         f"{free / 2**20:.1f} MiB free; free space or choose another --out")


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _block_keys(layout: StoreLayout) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Arrays each block file must hold: key -> (shape after the row axis, dtype)."""
    v, c = layout.num_views, layout.num_classes
    keys = {"labels": ((), S.DTYPES[S.LABELS])}
    if layout.topk:
        keys["topk_indices"] = ((v, layout.topk), S.DTYPES[S.TOPK_INDICES])
        keys["topk_values"] = ((v, layout.topk), S.DTYPES[S.TOPK_VALUES])
    else:
        keys["targets"] = ((v, c), S.DTYPES[S.TARGETS])
    if layout.logits:
        keys["logits"] = ((v, c), S.DTYPES[S.LOGITS])
    for tap, dim in layout.features.items():
        keys[f"features.{tap}"] = ((v, dim), S.FEATURE_DTYPE)
    if layout.per_sample_params:
        keys["view_params"] = ((v, layout.param_size), S.DTYPES[S.VIEW_PARAMS])
    return keys


def _key_to_path(key: str) -> str:
    if key.startswith("features."):
        return S.feature_path(key[len("features."):])
    return {"labels": S.LABELS, "targets": S.TARGETS, "topk_indices": S.TOPK_INDICES,
            "topk_values": S.TOPK_VALUES, "logits": S.LOGITS, "view_params": S.VIEW_PARAMS}[key]


def _normalise_header(header: dict, layout: StoreLayout) -> dict:
    try:
        header = json.loads(json.dumps(header, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"store header must be JSON-serialisable: {exc}") from exc
    for key in (S.ATTR_DATASET, S.ATTR_GENERATOR, S.ATTR_VIEWS):
        if not isinstance(header.get(key), dict):
            raise ValueError(f"store header needs a dict under {key!r}")
    header.setdefault(S.ATTR_LABELOPT_VERSION, "")
    dataset, views = header[S.ATTR_DATASET], header[S.ATTR_VIEWS]
    for key in ("name", "split", "fingerprint"):
        if key not in dataset:
            raise ValueError(f"store header dataset needs {key!r}")
    if "policy" not in views:
        raise ValueError("store header views needs 'policy'")
    try:  # readers refuse a store without a usable temperature: refuse to write one
        S.generator_temperature(header[S.ATTR_GENERATOR])
    except ValueError as exc:
        raise ValueError(f"store header: {exc}") from None
    dataset.setdefault("class_names", None)
    # The header repeats the layout's sizes so a plain-h5py reader finds them in the attrs.
    for holder, key, value in ((dataset, "num_samples", layout.num_samples),
                               (dataset, "num_classes", layout.num_classes),
                               (views, "num_views", layout.num_views)):
        if holder.setdefault(key, value) != value:
            raise ValueError(f"store header says {key}={holder[key]} but the layout has {value}")
    views.setdefault("param_names", None)
    return header


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
        self.header = _normalise_header(header, layout)
        self.shared_view_params = self._check_shared_params(shared_view_params)
        if self.path.exists() and not overwrite:
            raise StoreError(f"label store {self.path} already exists; pass --overwrite to replace it")
        self.partial = partial_dir(self.path)
        if clean_stale:
            self._remove_stale_temporaries()
            # Before the partial folder exists: a store that cannot fit leaves nothing behind.
            pending = sum(self.layout.block_bytes(b) for b in self.pending_blocks())
            check_free_space(self.path.parent, pending + self.layout.num_samples * self.layout.row_bytes(),
                             f"label store {self.path.name} (its blocks, then the assembled file)")
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
            write_bytes_atomic(job_path, json.dumps(job, sort_keys=True, indent=1).encode())
            if self.shared_view_params is not None:
                write_bytes_atomic(self.partial / SHARED_PARAMS_FILE, _npy_bytes(self.shared_view_params))

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

    def write_block(self, b: int, *, targets: np.ndarray, labels: np.ndarray, logits: np.ndarray | None = None,
                    features: dict | None = None, view_params: np.ndarray | None = None) -> None:
        lay = self.layout
        start, stop = lay.block_range(b)
        rows, v, c = stop - start, lay.num_views, lay.num_classes
        arrays: dict[str, np.ndarray] = {}

        targets = _expect(targets, "targets", (rows, v, c), "f")
        if lay.topk:
            idx, vals = top_k(targets.astype(np.float32, copy=False), lay.topk)
            arrays["topk_indices"] = idx
            arrays["topk_values"] = vals.astype(S.DTYPES[S.TOPK_VALUES])
        else:
            arrays["targets"] = targets.astype(S.DTYPES[S.TARGETS])
        arrays["labels"] = _expect(labels, "labels", (rows,), "iu").astype(S.DTYPES[S.LABELS])

        if lay.logits != (logits is not None):
            raise ValueError(f"layout.logits={lay.logits} but logits {'missing' if logits is None else 'given'}")
        if logits is not None:
            arrays["logits"] = _expect(logits, "logits", (rows, v, c), "f").astype(S.DTYPES[S.LOGITS])

        features = dict(features or {})
        if set(features) != set(lay.features):
            raise ValueError(f"features must have exactly the taps {sorted(lay.features)}, got {sorted(features)}")
        for tap, dim in lay.features.items():
            arrays[f"features.{tap}"] = _expect(features[tap], f"features[{tap!r}]", (rows, v, dim),
                                                "f").astype(S.FEATURE_DTYPE)

        if lay.per_sample_params != (view_params is not None):
            raise ValueError(f"layout.per_sample_params={lay.per_sample_params} but view_params "
                             f"{'missing' if view_params is None else 'given'}")
        if view_params is not None:
            arrays["view_params"] = _expect(view_params, "view_params", (rows, v, lay.param_size),
                                            "iub").astype(S.DTYPES[S.VIEW_PARAMS])

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_bytes_atomic(self.block_file(b), buf.getvalue())

    def _load_block(self, b: int) -> dict[str, np.ndarray]:
        start, stop = self.layout.block_range(b)
        path = self.block_file(b)
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {key: npz[key] for key in npz.files}
        except (OSError, ValueError) as exc:
            raise StoreError(f"block file {path} is unreadable ({exc}); delete it and rerun to redo that block")
        for key, (shape, dtype) in _block_keys(self.layout).items():
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
        check_free_space(self.path.parent, need, f"assembling {self.path.name}")
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}.h5")
        try:
            self._assemble(tmp)
            os.replace(tmp, self.path)
        except (OSError, RuntimeError) as exc:
            # h5py reports a failed write as OSError or RuntimeError with the errno in its text.
            if not (getattr(exc, "errno", None) in NO_SPACE or "errno = 28" in str(exc)
                    or "No space left" in str(exc)):
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
        keys = _block_keys(lay)
        chunk_rows = min(lay.block_rows, lay.num_samples)
        filters = {"compression": self.compression, "fletcher32": True}
        if self.compression == "gzip":
            filters["compression_opts"] = S.GZIP_LEVEL
        hashes = {}
        with h5py.File(tmp, "w") as f:
            f.attrs[S.ATTR_FORMAT] = S.FORMAT
            f.attrs[S.ATTR_SCHEMA_VERSION] = np.int64(S.SCHEMA_VERSION)
            f.attrs[S.ATTR_CREATED_UTC] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            f.attrs[S.ATTR_LABELOPT_VERSION] = str(self.header[S.ATTR_LABELOPT_VERSION])
            for key in S.JSON_ATTRS:
                f.attrs[key] = json.dumps(self.header[key], sort_keys=True)

            dsets = {}
            for key, (shape, dtype) in keys.items():
                path = _key_to_path(key)
                dsets[key] = f.create_dataset(path, shape=(lay.num_samples, *shape), dtype=dtype,
                                              chunks=(chunk_rows, *shape), **filters)
                # Blocks arrive in row order and each is C-contiguous, so hashing them in turn
                # equals hashing the whole dataset's C-order bytes.
                hashes[path] = hashlib.sha256()
            for b in _progress(range(lay.num_blocks()), f"assembling {self.path.name}"):
                start, stop = lay.block_range(b)
                data = self._load_block(b)
                for key, dset in dsets.items():
                    arr = np.ascontiguousarray(data[key])
                    dset[start:stop] = arr
                    hashes[_key_to_path(key)].update(arr.tobytes())
            if self.shared_view_params is not None:
                params = self.shared_view_params
                f.create_dataset(S.VIEW_PARAMS, data=params, chunks=params.shape, **filters)
                hashes[S.VIEW_PARAMS] = hashlib.sha256(params.tobytes())
            f.attrs[S.ATTR_CHECKSUMS] = json.dumps({k: h.hexdigest() for k, h in sorted(hashes.items())})
            # Last: a file that has this flag was written to the end ...
            f.attrs[S.ATTR_COMPLETE] = np.int64(1)
            # ... and the digest of every attribute, computed from what the file now holds.
            f.attrs[S.ATTR_DIGEST] = root_digest({name: f.attrs[name] for name in f.attrs.keys()})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())


def _expect(array, name: str, shape: tuple, kinds: str) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != shape or array.dtype.kind not in kinds:
        raise ValueError(f"{name} must be {shape} of kind {kinds!r}, got {array.dtype} {array.shape}")
    return array


def _progress(iterable, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, unit="block", disable=not sys.stderr.isatty(), leave=False)
