"""A store's shape: the layout of its arrays and blocks, what each block file holds, and the header every store
carries (checked before anything is written)."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import schema as S


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


def partial_block_rows(path: Path) -> int | None:
    """The samples per block of a stopped run's partial store for `path` (None: there is none, or it is unreadable)."""
    try:
        rows = json.loads((partial_dir(path) / JOB_FILE).read_text())["layout"]["block_rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rows if isinstance(rows, int) and not isinstance(rows, bool) and rows >= 1 else None


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of the last axis, largest first: (indices int32, values float32)."""
    part = np.argpartition(-probs, k - 1, axis=-1)[..., :k]
    vals = np.take_along_axis(probs, part, axis=-1)
    # Sort inside the k so readers can truncate further by slicing.
    order = np.argsort(-vals, axis=-1, kind="stable")
    return (np.take_along_axis(part, order, axis=-1).astype(np.int32),
            np.take_along_axis(vals, order, axis=-1))


def block_keys(layout: StoreLayout) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
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


def key_to_path(key: str) -> str:
    if key.startswith("features."):
        return S.feature_path(key[len("features."):])
    return {"labels": S.LABELS, "targets": S.TARGETS, "topk_indices": S.TOPK_INDICES,
            "topk_values": S.TOPK_VALUES, "logits": S.LOGITS, "view_params": S.VIEW_PARAMS}[key]


def file_datasets(layout: StoreLayout) -> dict[str, tuple[tuple[int, ...], np.dtype, tuple[str, ...]]]:
    """What `finish` writes from the blocks: dataset path -> (shape after the row axis, dtype, the block keys it
    is made of). A top-k store's class ids and values become one dataset of entries (schema v3)."""
    out = {}
    for key, (shape, dtype) in block_keys(layout).items():
        if key == "topk_indices":
            out[S.TOPK_ENTRIES] = ((layout.num_views,), S.topk_entry_dtype(layout.topk), (key, "topk_values"))
        elif key != "topk_values":
            out[key_to_path(key)] = (shape, dtype, (key,))
    return out


def file_rows(block: dict[str, np.ndarray], keys: tuple[str, ...]) -> np.ndarray:
    """A block's rows of one file dataset (file_datasets' keys), C-contiguous."""
    if len(keys) == 1:
        return np.ascontiguousarray(block[keys[0]])
    return packed_topk(block[keys[0]], block[keys[1]])


def packed_topk(indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """[..., k] class ids and values as [...] entries of S.topk_entry_dtype(k): each entry's ids then its values."""
    out = np.empty(indices.shape[:-1], dtype=S.topk_entry_dtype(indices.shape[-1]))
    out[S.TOPK_FIELDS[0]], out[S.TOPK_FIELDS[1]] = indices, values
    return out


def normalise_header(header: dict, layout: StoreLayout) -> dict:
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


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def expect_array(array, name: str, shape: tuple, kinds: str) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != shape or array.dtype.kind not in kinds:
        raise ValueError(f"{name} must be {shape} of kind {kinds!r}, got {array.dtype} {array.shape}")
    return array


CONTIGUOUS_FROM_BYTES = 2 ** 30  # --layout auto: stores this large (uncompressed) are written contiguous


def compression_for(choice: str, layout: StoreLayout) -> str:
    """The writer's compression for a `--layout` choice: `auto` writes a store of 1 GiB or more (uncompressed)
    contiguous, which a student then reads in place instead of loading it whole into every process."""
    if choice == "auto":
        choice = "contiguous" if layout.num_samples * layout.row_bytes() >= CONTIGUOUS_FROM_BYTES else "compressed"
    if choice not in S.LAYOUTS:
        raise ValueError(f"store layout must be auto or one of {sorted(S.LAYOUTS)}, got {choice!r}")
    return S.LAYOUTS[choice]
