"""`labelopt labels inspect`: what a label store holds and how good its labels are.

The quality figures treat each stored (sample, view) row as a prediction of the
ground truth recorded in the store: teacher top-1, mean confidence, mean entropy
and ECE of the stored soft labels. Top-k stores are read densified as training
sees them: the stored values, and the missing mass spread uniformly over the other classes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ...stages.metrics import calibration_bins
from ...store import LabelStore, StoreError, combine, schema, verify
from ...store.remote import is_url, local_store
from ...store.validation import open_h5, parse_attrs
from ..atomic import check_output_file
from ..data.datasets import open_dataset
from ..errors import UserError
from ..locks import output_lock

REPORT_BLOCK_ROWS = 1024


def open_store(path, expect_digest: str | None = None) -> LabelStore:
    """The store, validated (and checked against a pin of its root digest when one is given)."""
    try:
        return LabelStore.open(path, expect_digest)
    except StoreError as exc:
        raise UserError(str(exc)) from None


class _Accumulator:
    """Running sums over blocks of [rows, C] probabilities (calibration bins merged by count)."""

    def __init__(self, n_bins: int):
        self.n_bins = n_bins
        self.rows = self.labelled = self.correct = 0
        self.confidence_sum = self.entropy_sum = 0.0
        self.bin_counts = np.zeros(n_bins, np.int64)
        self.bin_confidence = np.zeros(n_bins)
        self.bin_correct = np.zeros(n_bins)

    def add(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        probs = probs.double()
        self.rows += probs.shape[0]
        self.confidence_sum += probs.max(1).values.sum().item()
        self.entropy_sum += -(probs * probs.clamp_min(1e-12).log()).sum().item()
        known = labels >= 0  # -1 marks unlabelled samples (STL-10's unlabeled split)
        if not bool(known.any()):
            return
        probs, labels = probs[known], labels[known]
        self.labelled += probs.shape[0]
        self.correct += int((probs.argmax(1) == labels).sum())
        bins = calibration_bins(probs, labels, self.n_bins)
        filled = bins.counts > 0
        self.bin_counts += bins.counts
        self.bin_confidence[filled] += bins.confidence[filled] * bins.counts[filled]
        self.bin_correct[filled] += bins.accuracy[filled] * bins.counts[filled]

    def summary(self) -> dict:
        out = {"rows": self.rows,
               "mean_confidence": self.confidence_sum / self.rows,
               "mean_entropy": self.entropy_sum / self.rows,
               "labelled_rows": self.labelled, "top1": None, "ece": None}
        if self.labelled:
            gaps = np.abs(self.bin_correct - self.bin_confidence).sum()  # sum_b |n_b acc_b - n_b conf_b|
            out.update(top1=100.0 * self.correct / self.labelled, ece=float(gaps / self.labelled))
        return out


def label_quality(store: LabelStore, n_bins: int = 15, block_rows: int = REPORT_BLOCK_ROWS) -> dict:
    """Top-1, confidence, entropy and ECE of every stored (sample, view) row against the ground truth."""
    labels = torch.from_numpy(store.labels())
    acc = _Accumulator(n_bins)
    for start in range(0, store.num_samples, block_rows):
        stop = min(start + block_rows, store.num_samples)
        block = torch.from_numpy(store.rows(schema.SIGNAL_TARGETS, start, stop))  # [rows, V, C]
        acc.add(block.reshape(-1, store.num_classes), labels[start:stop].repeat_interleave(store.num_views))
    result = acc.summary()
    result["max_entropy"] = math.log(store.num_classes)
    return result


def shapes(store: LabelStore) -> dict:
    n, v, c = store.num_samples, store.num_views, store.num_classes
    if store.is_topk and store.topk_packed:  # v3: [N, V] compound entries, each k class ids and k values
        out = {schema.TOPK_ENTRIES: [n, v]}
    elif store.is_topk:  # v2: two [N, V, k] datasets
        out = {name: [n, v, store.topk] for name in (schema.TOPK_INDICES, schema.TOPK_VALUES)}
    else:
        out = {"targets": [n, v, c]}
    if store.has_logits:
        out["logits"] = [n, v, c]
    for tap, dim in store.feature_dims.items():
        out[f"features/{tap}"] = [n, v, dim]
    out["labels"] = [n]
    return out


def inspect_store(path, n_bins: int = 15, cache_dir=None, expect_digest: str | None = None) -> dict:
    """A local path, or a URL fetched (and checked) into cache_dir first; "url" names it then. `expect_digest`: a
    pin of the store's root digest."""
    store = open_store(local_store(path, cache_dir), expect_digest)
    return {
        "path": str(store.path),
        **({"url": path} if is_url(path) else {}),
        "digest": store.digest,
        "size_bytes": store.size_bytes(),
        "created_utc": store.created_utc,
        "labelopt_version": store.labelopt_version,
        "dataset": store.dataset,
        "generator": store.generator,
        "temperature": store.temperature,
        "views": store.views,
        "storage": f"top-{store.topk}" if store.is_topk else "dense",
        "layout": store.layout,
        "shapes": shapes(store),
        "signals": [s for s in (schema.SIGNAL_TARGETS, schema.SIGNAL_LOGITS) if store.has(s)]
        + [schema.FEATURE_PREFIX + t for t in store.feature_taps],
        "labels": label_quality(store, n_bins),
    }


def _mix_note(views: dict) -> str:
    """For a store of mixed images: the mix, its alpha and what each part is seen through."""
    if views.get("policy") != "mix":
        return ""
    return (f"; {views.get('mix')} alpha {views.get('alpha')} over {views.get('base', {}).get('policy')}, "
            f"{views.get('parts')} images each, partners from the whole split; the ground-truth top-1 below is "
            f"the first part's class")


def _teachers(generator: dict) -> str:
    if generator.get("method") == "combine":
        return f"combine of {len(generator.get('members', []))} stores, weights {generator.get('weights')}"
    names = [f"{t.get('arch')} ({str(t.get('checkpoint_sha256', ''))[:12]})" for t in generator.get("teachers", [])]
    return ", ".join(names) or "none"


def _entry_type(name: str, report: dict) -> str:
    """What one entry of a compound dataset holds (docs/label-store.md's words): v3's top-k entries."""
    if name != schema.TOPK_ENTRIES:
        return ""
    k = report["storage"].removeprefix("top-")
    return f" of {{index: int32[{k}], value: float16[{k}]}}"


def format_inspection(report: dict) -> str:
    ds, gen, q = report["dataset"], report["generator"], report["labels"]
    fmt = lambda x, spec: "n/a" if x is None else format(x, spec)
    lines = [
        f"store        {report['path']}  ({report['size_bytes'] / 1e6:.2f} MB on disk, {report['storage']}, "
        f"{report['layout']})",
        *([f"fetched from {report['url']}"] if "url" in report else []),
        f"created      {report['created_utc']} by labelopt {report['labelopt_version']}",
        f"digest       {report['digest']}  (pin it: --expect-digest)",
        f"dataset      {ds.get('name')}/{ds.get('split')}  N={ds.get('num_samples')}  classes={ds.get('num_classes')}"
        f"  fingerprint {str(ds.get('fingerprint'))[:16]}",
        f"generator    method {gen.get('method')}  temperature {report['temperature']:g}"
        f"  options {gen.get('options', {})}",
        f"teachers     {_teachers(gen)}",
        f"views        {report['views'].get('spec', report['views'].get('policy'))}"
        f"  ({report['views'].get('num_views')} per sample{_mix_note(report['views'])})",
        "datasets     " + "  ".join(f"/{k} {v}{_entry_type(k, report)}" for k, v in report["shapes"].items()),
        f"signals      {', '.join(report['signals'])}",
        f"labels       top-1 vs ground truth {fmt(q['top1'], '.2f')} %  mean confidence {q['mean_confidence']:.4f}"
        f"  mean entropy {q['mean_entropy']:.4f} nats (max {q['max_entropy']:.4f})  ECE {fmt(q['ece'], '.4f')}"
        f"  over {q['rows']} rows",
    ]
    return "\n".join(lines)


def _store_split(path) -> str | None:
    """The split a store says it was made from, or None when the file cannot say (verify reports why)."""
    try:
        with open_h5(path) as f:
            return parse_attrs(f)[schema.ATTR_DATASET].get("split")
    except Exception:  # a broken file: verify's own checks name the cause
        return None


def verify_store(path, data_dir=None, teachers=(), sample: int | None = None, device: str = "auto",
                 cache_dir=None, expect_digest: str | None = None) -> dict:
    """store.verify, plus the dataset identity of the store's split when a prepared dataset is given, plus a
    re-label of `sample` random rows with the teacher checkpoints when they (or a sample size) are given.
    A URL is fetched into cache_dir first (a copy that fails the checks is refused there, with one line).
    `expect_digest`: a pin of the store's root digest (the "pin" check)."""
    url, path = (path if is_url(path) else None), local_store(path, cache_dir)
    identity, why = None, "the store's dataset is unreadable"
    if data_dir is not None:
        data = open_dataset(data_dir)
        split = _store_split(path)
        if split is not None:
            if split not in data.splits:
                raise UserError(f"{data_dir} has no '{split}' split, the split this store was made from; "
                                f"pass the prepared dataset the store belongs to")
            try:  # the split's .beton proved the file its fingerprint was computed with
                identity = data.identity(split)
            except UserError as exc:
                why = str(exc)
    result = verify(path, identity, expect_digest)
    if data_dir is not None and identity is None:
        result["checks"].append({"name": "identity", "ok": False, "detail": why})
        result["ok"] = False
    if teachers or sample is not None:
        _add_relabel(result, path, data_dir, tuple(teachers), sample, device)
    if url:
        result["url"] = url
    return result


def _add_relabel(result: dict, path, data_dir, teachers: tuple, sample: int | None, device: str) -> None:
    from .store_relabel import RelabelOptions, relabel_check

    if data_dir is None:
        raise UserError("--teacher/--sample re-label stored rows from their images: pass --data, the prepared "
                        "dataset the store was made from")
    if not result["ok"]:
        result["checks"].append({"name": "relabel", "ok": False, "detail": "skipped: the store failed the checks above"})
        return
    relabel = relabel_check(RelabelOptions(str(path), str(data_dir), teachers, sample, device), log=lambda m: None)
    result["checks"] += relabel["checks"]
    result["relabel"] = relabel["relabel"]
    result["ok"] = all(c["ok"] for c in result["checks"])


def format_relabel(relabel: dict, worst: int = 10) -> str:
    """The rows furthest from a fresh teacher answer, for the table output (--json has every row)."""
    from .reports import format_table

    rows = sorted(relabel["rows"], key=lambda r: -r["max_abs_diff"])[:worst]
    shown = [{"index": r["index"], "view": r["view"], "diff": f"{r['max_abs_diff']:.2e}",
              "logits": f"{r['logits_max_abs_diff']:.2e}" if "logits_max_abs_diff" in r else None,
              "ok": "ok" if r["ok"] else "FAILED"} for r in rows]
    head = (f"re-labelled {relabel['sample']} random rows on {relabel['device']} (seed {relabel['seed']}); "
            f"tolerance |stored - fresh| <= {relabel['atol']:.2e} + {relabel['rtol']:.2e} |fresh|; "
            f"the {len(rows)} largest differences:")
    return head + "\n" + format_table(shown, [("index", "index"), ("view", "view"), ("diff", "max |diff|"),
                                              ("logits", "logits max |diff|"), ("ok", "result")])


def combine_stores(paths, out, weights, *, overwrite: bool = False, layout: str = "auto",
                   expect_digests: list | None = None):
    """`expect_digests`: one pin per store, in their order (None: none pinned)."""
    from ... import __version__

    out = Path(out)
    check_output_file(out, overwrite, "label store")
    with output_lock(out, "label store"):
        return combine([Path(p) for p in paths], out, weights, overwrite=overwrite, labelopt_version=__version__,
                       layout=layout, expect_digests=expect_digests)


def repack_store(path, out, layout: str, *, overwrite: bool = False, expect_digest: str | None = None):
    from ...store.repack import repack

    out = Path(out)
    check_output_file(out, overwrite, "label store")
    with output_lock(out, "label store"):
        return repack(Path(path), out, layout, overwrite=overwrite, expect_digest=expect_digest)
