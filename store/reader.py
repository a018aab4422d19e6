"""Open a label store safely and gather soft labels for (sample index, view id) pairs.

Everything is validated on open (store/validation.py), so a student fails before training rather than mid-epoch.
Nothing is ever unpickled: only plain numeric dtypes are accepted and read.

Two storages, one schema: a compressed store (gzip/lzf chunks) is loaded into memory once; a contiguous store
(uncompressed: store/contiguous.py) is read in place, entry by entry, so its size is not bounded by memory and
the processes of a node share one copy of it (the page cache). A reader picks per dataset from what the file holds.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from . import schema as S
from .schema import StoreError
from .contiguous import DatasetRows, ReadHandle, dataset_region
from .memory import available_memory_bytes
from .validation import all_datasets, check_file, identity_mismatches, open_h5, read_dataset, stream_check, validate
from .signal_rows import TopkInMemory, signal_rows
from .values import as_float32, densify_topk

MEMORY_SHARE = 0.5  # a compressed store may take at most this share of the available memory when loaded


def topk_fields(entries) -> tuple:
    """A v3 store's top-k entries as (class ids, values): fields of the array in memory, or of the rows in place."""
    index, value = S.TOPK_FIELDS
    if isinstance(entries, DatasetRows):
        return entries.field(index), entries.field(value)
    return entries[index], entries[value]


class LabelStore:
    """A validated, read-only label store; `load` then `gather` for training.

    Every dataset is checked against its recorded sha256, and its values for being finite, as it is read (load,
    rows, labels, view_params), so a store edited after it was written is refused before anything trains on it.
    """

    def __init__(self, path: Path, meta: dict, facts: dict, shared_params: np.ndarray | None, storage: dict):
        self.path = path
        self.dataset: dict = meta[S.ATTR_DATASET]
        self.generator: dict = meta[S.ATTR_GENERATOR]
        self.views: dict = meta[S.ATTR_VIEWS]
        self.checksums: dict = meta[S.ATTR_CHECKSUMS]
        self.created_utc: str = meta[S.ATTR_CREATED_UTC]
        self.labelopt_version: str = meta[S.ATTR_LABELOPT_VERSION]
        self.num_samples: int = facts["num_samples"]
        self.num_views: int = facts["num_views"]
        self.num_classes: int = facts["num_classes"]
        self.topk: int | None = facts["topk"]
        self.is_topk: bool = self.topk is not None
        self.topk_packed: bool = facts["topk_packed"]  # v3: ids and values side by side in one dataset
        self.has_logits: bool = facts["has_logits"]
        self.feature_dims: dict[str, int] = facts["features"]
        self.feature_taps: list[str] = list(self.feature_dims)
        self.per_sample_params: bool = facts["per_sample_params"]
        self._temperature: float = facts["temperature"]
        self.digest: str = facts["digest"]  # the root digest: what a pin (expect_digest) names
        self._shared_params = shared_params
        self._storage = storage  # dataset path -> (region or None, shape, dtype)
        self._file: ReadHandle | None = None  # contiguous datasets are read through it
        self._mem: dict = {}  # signal -> its rows, loaded (store/signal_rows.py: one class per storage kind)
        self._streamed: set[str] = set()  # datasets whose sha256 has been checked in full

    @classmethod
    def open(cls, path, expect_digest: str | None = None) -> "LabelStore":
        """The store at `path`, validated (store/validation.py); `expect_digest`: a pin of its root digest (64 hex
        digits), refused when the store's differs."""
        path = Path(path)
        check_file(path)
        with open_h5(path) as f:
            meta, facts = validate(f, expect_digest)
            shared = None if facts["per_sample_params"] else read_dataset(f, S.VIEW_PARAMS, meta[S.ATTR_CHECKSUMS])
            storage = {name: (dataset_region(d), d.shape, d.dtype) for name, d in all_datasets(f).items()}
        return cls(path, meta, facts, shared, storage)

    @property
    def layout(self) -> str:
        """`contiguous` (read in place) when every dataset can be, else `compressed` (loaded into memory)."""
        return "contiguous" if all(region for region, _, _ in self._storage.values()) else "compressed"

    @property
    def temperature(self) -> float:
        """The temperature the soft labels were made at (finite, > 0; checked on open)."""
        return self._temperature

    def __repr__(self) -> str:
        kind = f"top-{self.topk}" if self.is_topk else "dense"
        return (f"LabelStore({str(self.path)!r}, {self.dataset.get('name')}/{self.dataset.get('split')}, "
                f"N={self.num_samples}, V={self.num_views}, C={self.num_classes}, {kind}, T={self.temperature:g})")

    # -- checks ---------------------------------------------------------------------------

    def check_dataset(self, identity: dict) -> None:
        bad = identity_mismatches(self.dataset, identity)
        if bad:
            key, ours, theirs = bad[0]
            raise StoreError(
                f"label store {self.path} does not match the data: {key} is {ours!r} in the store but {theirs!r} "
                f"for the data; this store was made from {self.dataset.get('name')}/{self.dataset.get('split')}; "
                f"generate labels for this data with labelopt generate-labels")

    def has(self, signal: str) -> bool:
        if signal == S.SIGNAL_TARGETS:
            return True
        if signal == S.SIGNAL_LOGITS:
            return self.has_logits
        return signal.startswith(S.FEATURE_PREFIX) and signal[len(S.FEATURE_PREFIX):] in self.feature_dims

    def require(self, signal: str) -> None:
        S.signal_path(signal)  # ValueError for a signal name that does not exist at all
        if self.has(signal):
            return
        if signal == S.SIGNAL_LOGITS:
            flag = "--logits"
        else:
            flag = f"--features {signal[len(S.FEATURE_PREFIX):]}"
        have = ", ".join(self.feature_taps) or "none"
        raise StoreError(f"store {self.path} has no {signal} (feature taps: {have}); regenerate it with "
                         f"labelopt generate-labels ... {flag}")

    # -- data -----------------------------------------------------------------------------

    def _read(self, f: h5py.File, path: str) -> np.ndarray:
        return read_dataset(f, path, self.checksums)

    def _signal_paths(self, signal: str) -> tuple[str, ...]:
        if signal == S.SIGNAL_TARGETS and self.is_topk:
            return (S.TOPK_ENTRIES,) if self.topk_packed else (S.TOPK_INDICES, S.TOPK_VALUES)
        return (S.signal_path(signal),)

    def _in_place(self, f: h5py.File, path: str) -> DatasetRows | None:
        """A contiguous dataset, checked against its sha256 once (streamed, as rows() does), read entry by entry
        from the file; None when the dataset is compressed."""
        region, shape, dtype = self._storage[path]
        if region is None:
            return None
        self._stream(f, (path,))
        if self._file is None:
            self._file = ReadHandle(self.path)
        return DatasetRows(self._file, self.path, path, region, shape, dtype)

    def _check_fits(self, paths: list[str]) -> None:
        need = sum(int(np.prod(self._storage[p][1])) * self._storage[p][2].itemsize for p in paths)
        have = available_memory_bytes()
        if need > MEMORY_SHARE * have:
            raise StoreError(
                f"label store {self.path} is compressed, so training loads it whole: {need / 2**30:.2f} GiB, more "
                f"than half of the {have / 2**30:.2f} GiB of memory available; rewrite it in the contiguous "
                f"layout, read in place: labelopt labels repack {self.path} --layout contiguous --out NEW.h5")

    def load(self, signals=(S.SIGNAL_TARGETS,)) -> None:
        """Make the signals a student needs ready to gather, each checked against its sha256 first: contiguous
        datasets are read in place, compressed ones into memory (refused when they would not fit)."""
        if isinstance(signals, str):
            signals = (signals,)
        todo = [s for s in signals if s not in self._mem]
        for signal in todo:
            self.require(signal)
        in_memory = [p for s in todo for p in self._signal_paths(s) if self._storage[p][0] is None]
        self._check_fits(in_memory)
        with open_h5(self.path) as f:
            for signal in todo:
                arrays = [self._in_place(f, p) for p in self._signal_paths(signal)]
                arrays = [self._read(f, p) if a is None else a for a, p in zip(arrays, self._signal_paths(signal))]
                if signal == S.SIGNAL_TARGETS and self.topk_packed:
                    arrays = topk_fields(arrays[0])
                self._mem[signal] = signal_rows(arrays, self.num_classes)

    def gather(self, indices: torch.Tensor, views: torch.Tensor | None = None,
               signal: str = S.SIGNAL_TARGETS) -> torch.Tensor:
        """float32 [B, C] (targets/logits) or [B, D] (features) for rows (indices[i], views[i]).

        Top-k targets come back dense: the stored values, and the missing mass spread over the other classes."""
        if signal not in self._mem:
            self.load((signal,))
        # numpy indexing, single-threaded: torch splits a gather this small across threads, and on a machine
        # whose cores are busy (FFCV's loader threads) each split waits for a time slice: ms instead of us.
        rows = torch.as_tensor(indices, dtype=torch.long).cpu().numpy()
        cols = np.zeros_like(rows) if views is None else torch.as_tensor(views, dtype=torch.long).cpu().numpy()
        return torch.from_numpy(self._mem[signal].gather(rows, cols))

    def topk_entries(self, indices, views) -> tuple[np.ndarray, np.ndarray]:
        """A top-k store's stored (class ids int64 [B, k], values float32 [B, k]) for rows (indices, views)."""
        if not self.is_topk:
            raise StoreError(f"store {self.path} is dense; it has no top-k entries")
        self.load((S.SIGNAL_TARGETS,))
        rows, cols = np.asarray(indices, dtype=np.int64), np.asarray(views, dtype=np.int64)
        targets: TopkInMemory = self._mem[S.SIGNAL_TARGETS]  # a top-k kind, in memory or in place
        idx, vals = targets.entries(rows, cols)
        return idx.astype(np.int64), as_float32(vals)

    def rows(self, signal: str, start: int, stop: int) -> np.ndarray:
        """Dense float32 [stop-start, V, C or D] straight from the file (top-k densified as in gather): for tools.

        The first read of a dataset streams all of it once through sha256 (constant memory, one extra pass)."""
        self.require(signal)
        paths = self._signal_paths(signal)
        with open_h5(self.path) as f:
            self._stream(f, paths)
            try:
                parts = [f[path][start:stop] for path in paths]
            except OSError as exc:
                raise StoreError(f"{self.path}: {signal} failed to read ({exc}); the file is corrupt: "
                                 f"run labelopt labels verify and regenerate it")
        if signal == S.SIGNAL_TARGETS and self.topk_packed:
            parts = topk_fields(parts[0])
        if len(parts) == 2:
            return densify_topk(parts[0], parts[1], self.num_classes)
        return as_float32(parts[0])

    def check(self, signal: str = S.SIGNAL_TARGETS) -> None:
        """Prove a signal's datasets whole now (sha256 and finite values, streamed, nothing kept): a tool that
        writes from them (combine) refuses a damaged member before it writes anything."""
        self.require(signal)
        with open_h5(self.path) as f:
            self._stream(f, self._signal_paths(signal))

    def _stream(self, f: h5py.File, paths) -> None:
        for path in paths:
            if path not in self._streamed:
                stream_check(f, path, self.checksums)
                self._streamed.add(path)

    def labels(self) -> np.ndarray:
        """Ground-truth labels seen at generation, int64 [N]."""
        with open_h5(self.path) as f:
            return self._read(f, S.LABELS)

    def view_params(self, indices=None) -> np.ndarray:
        """Shared stores: the [V, P] table (same for every sample, `indices` ignored).
        Per-sample stores: [N, V, P], or [len(indices), V, P] for the given sample indices."""
        if self._shared_params is not None:
            return self._shared_params
        if indices is None:  # the whole table in memory, in one read whatever the layout
            with open_h5(self.path) as f:
                return self._read(f, S.VIEW_PARAMS)
        return self.view_param_table()[np.asarray(indices, dtype=np.int64)]

    def view_param_table(self):
        """The view parameters to index like numpy ([V, P] or [N, V, P]): a contiguous store's per-sample table
        stays in the file and is read per key (it can outgrow memory); otherwise an array in memory."""
        if self._shared_params is not None:
            return self._shared_params
        with open_h5(self.path) as f:
            params = self._in_place(f, S.VIEW_PARAMS)
            return self._read(f, S.VIEW_PARAMS) if params is None else params

    def size_bytes(self) -> int:
        return os.path.getsize(self.path)
