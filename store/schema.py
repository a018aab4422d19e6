"""Label store schema v3: names, dtypes and the one error type every store module raises.

Kept free of h5py so that anything (docs tooling, the CLI) can import the constants cheaply.
"""
from __future__ import annotations

import math

import numpy as np

FORMAT = "labelopt.labels"
# v2: the root `digest` attribute; v1 stores are refused (regenerate them).
# v3: a top-k store keeps each entry's class ids and values side by side in one dataset (TOPK_ENTRIES), so a
# reader fetches an entry in one read instead of two; v2's two datasets (TOPK_INDICES, TOPK_VALUES) are still read.
SCHEMA_VERSION = 3
READS_VERSIONS = (2, 3)

# Root attributes. JSON ones hold dicts; the others are plain scalars/strings.
ATTR_FORMAT = "format"
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_CREATED_UTC = "created_utc"
ATTR_LABELOPT_VERSION = "labelopt_version"
ATTR_DATASET = "dataset"
ATTR_GENERATOR = "generator"
ATTR_VIEWS = "views"
ATTR_COMPLETE = "complete"
ATTR_CHECKSUMS = "checksums"
ATTR_DIGEST = "digest"  # sha256 over every other root attribute (store/checksums.py)
JSON_ATTRS = (ATTR_DATASET, ATTR_GENERATOR, ATTR_VIEWS)

# Dataset paths (relative to the root, no leading slash: the same spelling is used as
# the key of the `checksums` attribute).
TARGETS = "targets"
TOPK_ENTRIES = "topk/entries"  # v3
TOPK_INDICES = "topk/indices"  # v2
TOPK_VALUES = "topk/values"  # v2
LOGITS = "logits"
VIEW_PARAMS = "views/params"
FEATURES_GROUP = "features"
LABELS = "labels"

# The groups a store may hold; with the datasets above (features/<tap> for any tap name), every object a store may
# hold (schema_kind). Anything else is refused on open, before a byte of it is read.
GROUPS = ("topk", "views", FEATURES_GROUP)
TOPK_PATHS = {3: (TOPK_ENTRIES,), 2: (TOPK_INDICES, TOPK_VALUES)}  # a top-k store's datasets, by schema version

# Storage dtypes: float16 halves the size of soft labels and is plenty for probabilities.
DTYPES = {
    TARGETS: np.dtype("<f2"),
    TOPK_INDICES: np.dtype("<i4"),
    TOPK_VALUES: np.dtype("<f2"),
    LOGITS: np.dtype("<f2"),
    VIEW_PARAMS: np.dtype("<i8"),
    LABELS: np.dtype("<i8"),
}
FEATURE_DTYPE = np.dtype("<f2")
TOPK_FIELDS = ("index", "value")  # the fields of a TOPK_ENTRIES entry, in file order


def topk_entry_dtype(k: int) -> np.dtype:
    """One top-k entry of a v3 store: k class ids (int32), then their k values (float16), 6k bytes, packed.
    The only compound dtype a store may hold (validation.check_storage)."""
    return np.dtype([(TOPK_FIELDS[0], DTYPES[TOPK_INDICES], (k,)), (TOPK_FIELDS[1], DTYPES[TOPK_VALUES], (k,))])


def topk_entry_width(dtype: np.dtype) -> int | None:
    """k when `dtype` is exactly topk_entry_dtype(k), else None."""
    fields = dtype.fields
    if fields is None or tuple(dtype.names) != TOPK_FIELDS:
        return None
    k = fields[TOPK_FIELDS[0]][0].shape
    return k[0] if len(k) == 1 and k[0] >= 1 and dtype == topk_entry_dtype(k[0]) else None

# Compression: gzip is readable everywhere HDF5 is; lzf is faster but h5py-only; "none" is the contiguous layout
# (contiguous, unfiltered, page-aligned: read in place, store/contiguous.py). Same schema either way.
COMPRESSIONS = ("gzip", "lzf", "none")
# What `--layout` offers: compressed stores are smaller to share; contiguous ones are read in place.
LAYOUTS = {"compressed": "gzip", "contiguous": "none"}
GZIP_LEVEL = 4

# Signals a student can ask for; features are "features:<tap>".
SIGNAL_TARGETS = "targets"
SIGNAL_LOGITS = "logits"
FEATURE_PREFIX = "features:"
# Teacher taps a store can hold per view: 1-D per sample (a stage's [C, H, W] map is not stored).
STORABLE_TAPS = ("pool", "logits")


def store_can_hold(signal: str) -> bool:
    """Whether a label store can serve this signal (given a store made with the matching options)."""
    if signal.startswith(FEATURE_PREFIX):
        return signal[len(FEATURE_PREFIX):] in STORABLE_TAPS
    return signal in (SIGNAL_TARGETS, SIGNAL_LOGITS)

# Fields of the `dataset` attribute that tie a store to the data it was made from.
IDENTITY_FIELDS = ("name", "split", "num_samples", "num_classes", "fingerprint")


class StoreError(ValueError):
    """A store (or a request against one) is unusable; the message is one line: what and what to do."""

    def __init__(self, message: str):
        # One line keeps CLI output and logs greppable even if a path contains a newline.
        super().__init__(" ".join(str(message).split()))


def feature_path(tap: str) -> str:
    return f"{FEATURES_GROUP}/{tap}"


def check_tap_name(tap: str) -> str:
    """Taps become HDF5 names as-is; only refuse what would change the tree (slashes, '.', '..')."""
    if not isinstance(tap, str) or not tap or "/" in tap or tap in (".", "..") or "\x00" in tap:
        raise ValueError(f"feature tap name {tap!r} is not usable as an HDF5 name (no '/', not empty)")
    return tap


def schema_kind(name: str, version: int | None) -> str | None:
    """"group" or "dataset" when a store of this schema version may hold an object at `name` (a path without its
    leading slash), else None (version None: the names of every version read)."""
    if name in GROUPS:
        return "group"
    topk = TOPK_PATHS.get(version, tuple(p for paths in TOPK_PATHS.values() for p in paths))
    if name in (TARGETS, LOGITS, LABELS, VIEW_PARAMS, *topk):
        return "dataset"
    group, _, tap = name.partition("/")
    if group == FEATURES_GROUP and tap and "/" not in tap and tap not in (".", ".."):
        return "dataset"
    return None


def signal_path(signal: str) -> str:
    """The dataset that backs a signal (targets of a top-k store map to its values dataset)."""
    if signal == SIGNAL_TARGETS:
        return TARGETS
    if signal == SIGNAL_LOGITS:
        return LOGITS
    if signal.startswith(FEATURE_PREFIX):
        return feature_path(check_tap_name(signal[len(FEATURE_PREFIX):]))
    raise ValueError(f"unknown signal {signal!r}: use 'targets', 'logits' or 'features:<tap>'")


def generator_temperature(generator: dict) -> float:
    """The temperature of a store's soft labels: the generator's own, or its members' common one (combined stores).

    ValueError (the reason) when it is missing, not a finite number > 0, or the members disagree.
    """
    if not isinstance(generator, dict):
        raise ValueError("the generator record is missing")
    own = generator.get("temperature")
    found = [] if own is None and "temperature" not in generator else [_positive(own)]
    members = generator.get("members")
    if members is not None:
        if not isinstance(members, list) or not members:
            raise ValueError("the generator's members are not a non-empty list")
        found += [generator_temperature(m.get("generator") if isinstance(m, dict) else None) for m in members]
    if not found:
        raise ValueError("the generator record has no temperature")
    if len(set(found)) > 1:
        raise ValueError(f"the generator record mixes temperatures {sorted(set(found))}")
    return found[0]


def _positive(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"the generator's temperature {value!r} is not a finite number > 0")
    return float(value)
