"""Validation of a label store on open, step by step (verification.verify runs the steps one by one): the file, its
format, digest (and a pin of it) and attributes, its objects and links, storage and shapes, and each dataset's
checksum and finite values as it is read (checksums.py computes and compares the hashes). Every reader
(LabelStore.open, labels verify, and through them inspect, card, combine, repack, train-student and a fetched URL)
goes through these steps, so a store is refused the same way everywhere.

Nothing is ever unpickled: only plain numeric dtypes are accepted and read; nothing is read (not even a fill
value) before the file is proved to hold only the schema's objects, in full, in this file."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import h5py
import numpy as np

from .checksums import check_array, check_digest_of, check_finite, check_pin, check_root_digest, scan_dataset
from . import schema as S
from .schema import StoreError


def check_file(path: Path) -> None:
    if not path.is_file():
        raise StoreError(f"label store {path} does not exist; check the path or run labelopt generate-labels")
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path} is not an HDF5 file (truncated or not a label store); regenerate it")


def open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise StoreError(f"cannot open label store {path} ({exc}); the file is truncated or corrupt: regenerate it")


def _attr_int(f: h5py.File, name: str):
    value = f.attrs.get(name)
    try:
        return int(np.asarray(value).item())
    except (TypeError, ValueError):
        return None


def check_format(f: h5py.File) -> int:
    """The schema version, when this labelopt reads it."""
    name = f.filename
    if f.attrs.get(S.ATTR_FORMAT) != S.FORMAT:
        raise StoreError(f"{name} is not a labelopt label store (format attribute is not {S.FORMAT!r})")
    version = _attr_int(f, S.ATTR_SCHEMA_VERSION)
    if version is not None and version < min(S.READS_VERSIONS):
        raise StoreError(f"{name} is a schema {version} label store, older than this labelopt reads "
                         f"({min(S.READS_VERSIONS)}: its attributes carry a digest); regenerate it with labelopt "
                         f"generate-labels")
    if version not in S.READS_VERSIONS:
        raise StoreError(f"{name}: schema version {version} is not supported by this labelopt "
                         f"(reads {', '.join(map(str, S.READS_VERSIONS))}): upgrade labelopt")
    return version


def root_attrs(f: h5py.File) -> dict:
    """Every root attribute as h5py returns it; one that cannot be read at all makes the file unusable."""
    try:
        return {name: f.attrs[name] for name in f.attrs.keys()}
    except (OSError, TypeError, ValueError) as exc:
        raise StoreError(f"{f.filename}: a root attribute cannot be read ({exc}); regenerate the store")


def check_digest(f: h5py.File) -> str:
    return check_root_digest(f.filename, root_attrs(f))


def check_complete(f: h5py.File) -> None:
    if _attr_int(f, S.ATTR_COMPLETE) != 1:
        raise StoreError(f"incomplete store {f.filename}: it was not finished (writer crashed or was stopped); "
                         f"regenerate it")


def check_temperature(f: h5py.File, meta: dict) -> float:
    try:
        return S.generator_temperature(meta[S.ATTR_GENERATOR])
    except ValueError as exc:
        raise StoreError(f"{f.filename}: {exc}; soft labels need the temperature they were made at: "
                         f"regenerate the store")


def check_listing(f: h5py.File, meta: dict) -> None:
    """The checksums attribute names exactly the datasets in the file (none added, none deleted)."""
    listed, present = set(meta[S.ATTR_CHECKSUMS]), set(all_datasets(f))
    unlisted, gone = sorted(present - listed), sorted(listed - present)
    if unlisted:
        raise StoreError(f"{f.filename}: dataset /{unlisted[0]} has no entry in the checksums attribute; "
                         f"re-fetch the store or regenerate it")
    if gone:
        raise StoreError(f"{f.filename}: checksums list /{gone[0]} but the file has no such dataset (deleted?); "
                         f"re-fetch the store or regenerate it")


def parse_attrs(f: h5py.File) -> dict:
    name = f.filename
    meta = {}
    for key in (*S.JSON_ATTRS, S.ATTR_CHECKSUMS):
        raw = f.attrs.get(key)
        try:
            meta[key] = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            meta[key] = None
        if not isinstance(meta[key], dict):
            raise StoreError(f"{name}: attribute {key!r} is missing or not a JSON object; regenerate the store")
    for key in (S.ATTR_CREATED_UTC, S.ATTR_LABELOPT_VERSION):
        value = f.attrs.get(key, "")
        meta[key] = value if isinstance(value, str) else ""
    meta[S.ATTR_SCHEMA_VERSION] = _attr_int(f, S.ATTR_SCHEMA_VERSION)  # which top-k datasets to expect
    return meta


def check_objects(f: h5py.File) -> None:
    """Before anything is read: every link a plain hard link, every object one the schema names (of the kind it
    names), reachable by that one name, with no attributes of its own. So no soft, external or user-defined link,
    no second name for a dataset, nothing hidden beside the schema's objects."""
    version = _attr_int(f, S.ATTR_SCHEMA_VERSION)
    links = []
    f.visititems_links(lambda name, link: links.append((name, link)))
    for name, link in links:
        if isinstance(link, h5py.SoftLink):
            # Resolving it is safe only once no link leaves the file: report what it is first, then where it goes.
            if any(not isinstance(other, (h5py.HardLink, h5py.SoftLink)) for _, other in links):
                continue
            what = "a dangling soft link" if f.get(name) is None else f"a soft link to {link.path}"
            raise StoreError(f"{f.filename} has {what} at /{name}; a label store holds only its own datasets, each "
                             f"under its one name: regenerate it (or re-fetch the original)")
        if not isinstance(link, h5py.HardLink):
            raise StoreError(f"{f.filename} has an external link at /{name}; refusing to follow links out of a "
                             f"label store: regenerate it")
    for name, _ in links:
        _check_object(f, name, version)


def _check_object(f: h5py.File, name: str, version: int | None) -> None:
    want = S.schema_kind(name, version)
    if want is None:
        raise StoreError(f"{f.filename} has an object /{name} that is not part of a label store (schema "
                         f"{version}); refusing it: a store holds only the datasets docs/label-store.md lists, "
                         f"regenerate it (or re-fetch the original)")
    obj = f[name]
    kind = "group" if isinstance(obj, h5py.Group) else "dataset" if isinstance(obj, h5py.Dataset) else "datatype"
    if kind != want:
        raise StoreError(f"{f.filename}: /{name} is a {kind}, where a label store has a {want}; regenerate it")
    if h5py.h5o.get_info(obj.id).rc != 1:
        raise StoreError(f"{f.filename}: the object at /{name} has another name in the file too (a second hard "
                         f"link); a store's datasets each have one name: regenerate it")
    if len(obj.attrs):
        raise StoreError(f"{f.filename}: /{name} carries attributes of its own, which a label store never has "
                         f"(all of a store's attributes are on its root, under the digest): regenerate it")


def all_datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    f.visititems(visit)
    return found


def check_storage(f: h5py.File) -> None:
    """Only plain numeric datasets whose every byte is in this file: no virtual dataset (its values would come from
    other files), no external raw storage, no object/vlen dtypes and no compound dtype but the top-k entry's (class
    ids and values side by side); and each dataset's storage written in full (check_allocated)."""
    file_bytes = os.path.getsize(f.filename)
    declared = 0
    for name, dset in all_datasets(f).items():
        if dset.is_virtual:
            raise StoreError(f"{f.filename}: dataset /{name} is an HDF5 virtual dataset (its values are read from "
                             f"other files); a label store must hold its own labels: regenerate it")
        if dset.external:
            raise StoreError(f"{f.filename}: dataset /{name} uses external storage; refusing it: regenerate the store")
        dtype = dset.dtype
        if not (name == S.TOPK_ENTRIES and S.topk_entry_width(dtype) is not None) and (
                dtype.kind not in "fiub" or dtype.fields is not None or h5py.check_vlen_dtype(dtype) is not None):
            raise StoreError(f"{f.filename}: dataset /{name} has non-numeric dtype {dtype}; refusing it "
                             f"(label stores hold plain numbers only): regenerate the store")
        check_filters(f.filename, name, dset)
        declared += check_allocated(f.filename, name, dset, file_bytes)
    if declared > MAX_COMPRESSION * file_bytes:
        raise StoreError(f"{f.filename} declares {declared / 2**30:.1f} GiB of datasets, more than its "
                         f"{file_bytes / 2**20:.1f} MiB could hold at any compression: it is not a complete store; "
                         f"regenerate it")


# deflate, the best of the store's filters, never packs more than 1032 bytes into one: a file of S bytes cannot hold
# datasets of more than 1032 S bytes.
MAX_COMPRESSION = 1032
# The HDF5 filters a compressed store's chunks go through (docs/label-store.md): gzip or lzf, shuffle, fletcher32.
STORE_FILTERS = {h5py.h5z.FILTER_DEFLATE: "gzip", h5py.h5z.FILTER_LZF: "lzf", h5py.h5z.FILTER_SHUFFLE: "shuffle",
                 h5py.h5z.FILTER_FLETCHER32: "fletcher32"}


def check_filters(filename, name: str, dset: h5py.Dataset) -> None:
    """No filter but the store's own: another (a plugin, szip, scale-offset) would not be read alike everywhere,
    and could pack more than MAX_COMPRESSION into the file."""
    plist = dset.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in STORE_FILTERS:
            raise StoreError(f"{filename}: dataset /{name} is stored through HDF5 filter {code}, which label stores "
                             f"never use (only {', '.join(STORE_FILTERS.values())}): regenerate it")


def check_allocated(filename, name: str, dset: h5py.Dataset, file_bytes: int) -> int:
    """A complete store has every byte of every dataset written: a chunked dataset has all its chunks, a contiguous
    one its whole extent inside the file. Counted from the file's own index, before a byte is read, so a file that
    declares more than it holds (a huge dataset never written, read back as fill values) is refused at once.
    Returns the dataset's declared bytes."""
    declared = int(dset.size) * dset.dtype.itemsize
    if declared == 0:
        return 0
    layout = dset.id.get_create_plist().get_layout()
    if layout == h5py.h5d.CHUNKED:
        expected = math.prod(-(-size // chunk) for size, chunk in zip(dset.shape, dset.chunks))
        written = dset.id.get_num_chunks()
        if written < expected:
            raise StoreError(f"{filename}: dataset /{name} declares {dset.shape} ({declared / 2**30:.3g} GiB) but "
                             f"only {written} of its {expected} chunks were ever written: it is not a complete "
                             f"store; regenerate it")
    elif layout == h5py.h5d.CONTIGUOUS:
        offset = dset.id.get_offset()
        if offset is None or dset.id.get_storage_size() < declared or offset + declared > file_bytes:
            raise StoreError(f"{filename}: dataset /{name} declares {dset.shape} ({declared / 2**30:.3g} GiB) but "
                             f"the file does not hold its bytes (never written, or the file is truncated): "
                             f"regenerate it")
    elif layout != h5py.h5d.COMPACT or dset.id.get_storage_size() < declared:
        raise StoreError(f"{filename}: dataset /{name} is not stored in this file as a label store's datasets are; "
                         f"regenerate it")
    return declared


def check_shapes(f: h5py.File, meta: dict) -> dict:
    """Required datasets present with shapes agreeing with the attrs; returns the derived facts."""
    name = f.filename

    def size(holder, key):
        value = meta[holder].get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise StoreError(f"{name}: attribute {holder}.{key} is missing or not a positive int; regenerate")
        return value

    n, c, v = size(S.ATTR_DATASET, "num_samples"), size(S.ATTR_DATASET, "num_classes"), size(S.ATTR_VIEWS, "num_views")
    dsets = all_datasets(f)

    def expect(path, shape_ok, what):
        dset = dsets.get(path)
        if dset is None:
            raise StoreError(f"{name}: required dataset /{path} is missing; regenerate the store")
        if not shape_ok(dset.shape):
            raise StoreError(f"{name}: dataset /{path} has shape {dset.shape}, expected {what}; regenerate")
        return dset

    facts = {"num_samples": n, "num_views": v, "num_classes": c}
    packed = (meta.get(S.ATTR_SCHEMA_VERSION) or 0) >= 3  # top-k entries in one dataset (v3) or two (v2)
    expect(S.LABELS, lambda s: s == (n,), f"({n},)")
    if S.TARGETS in dsets:
        both = [p for paths in S.TOPK_PATHS.values() for p in paths if p in dsets]
        if both:
            raise StoreError(f"{name}: it holds both /{S.TARGETS} and /{both[0]}; a store is dense or top-k, never "
                             f"both: regenerate it")
        expect(S.TARGETS, lambda s: s == (n, v, c), f"({n}, {v}, {c})")
        facts["topk"] = None
    elif packed:
        k = S.topk_entry_width(expect(S.TOPK_ENTRIES, lambda s: s == (n, v), f"({n}, {v})").dtype)
        if k is None or k > c:
            raise StoreError(f"{name}: dataset /{S.TOPK_ENTRIES} is not K class ids and K values per entry with "
                             f"K <= {c}; regenerate the store")
        facts["topk"] = k
    else:
        idx = expect(S.TOPK_INDICES, lambda s: len(s) == 3 and s[:2] == (n, v) and 1 <= s[2] <= c,
                     f"({n}, {v}, K<={c})")
        k = idx.shape[2]
        expect(S.TOPK_VALUES, lambda s: s == (n, v, k), f"({n}, {v}, {k})")
        facts["topk"] = k
    facts["topk_packed"] = facts["topk"] is not None and packed
    facts["has_logits"] = S.LOGITS in dsets
    if facts["has_logits"]:
        expect(S.LOGITS, lambda s: s == (n, v, c), f"({n}, {v}, {c})")
    params = expect(S.VIEW_PARAMS, lambda s: (len(s) == 2 and s[0] == v) or (len(s) == 3 and s[:2] == (n, v)),
                    f"({v}, P) or ({n}, {v}, P)")
    facts["per_sample_params"] = params.ndim == 3
    taps = {}
    prefix = S.FEATURES_GROUP + "/"
    for path, dset in dsets.items():
        if path.startswith(prefix):
            expect(path, lambda s: len(s) == 3 and s[:2] == (n, v), f"({n}, {v}, D)")
            taps[path[len(prefix):]] = dset.shape[2]
    facts["features"] = dict(sorted(taps.items()))
    return facts


def validate(f: h5py.File, expect_digest: str | None = None) -> tuple[dict, dict]:
    """Every check of an opened store, in the order that reads nothing it has not proved safe to read; facts
    include its root digest (checked against `expect_digest`, a pin, when one is given)."""
    check_format(f)
    check_complete(f)
    digest = check_digest(f)
    check_pin(f.filename, digest, expect_digest)
    check_objects(f)
    check_storage(f)
    meta = parse_attrs(f)
    check_listing(f, meta)
    facts = check_shapes(f, meta)
    facts["temperature"] = check_temperature(f, meta)
    facts["digest"] = digest
    return meta, facts


def read_dataset(f: h5py.File, path: str, checksums: dict) -> np.ndarray:
    """Whole dataset as numpy, its sha256 checked against `checksums`; a failure is a StoreError naming it."""
    try:
        array = f[path][()]
    except OSError as exc:
        raise StoreError(f"{f.filename}: dataset /{path} failed to read ({exc}); the file is corrupt: "
                         f"run labelopt labels verify and regenerate it")
    return check_array(f.filename, path, array, checksums)


def stream_check(f: h5py.File, path: str, checksums: dict) -> None:
    """Check a dataset's sha256 and that its values are finite, chunk by chunk, keeping none of it (for readers of
    slices and of datasets read in place)."""
    try:
        digest, bad_row = scan_dataset(f[path])
    except OSError as exc:
        raise StoreError(f"{f.filename}: dataset /{path} failed to read ({exc}); the file is corrupt: "
                         f"run labelopt labels verify and regenerate it")
    check_digest_of(f.filename, path, digest, checksums)
    check_finite(f.filename, path, bad_row)


def identity_mismatches(dataset: dict, identity: dict) -> list[tuple[str, object, object]]:
    """(field, store value, given value) for each identity field that differs."""
    return [(key, dataset.get(key), identity[key]) for key in S.IDENTITY_FIELDS
            if key in identity and dataset.get(key) != identity[key]]
