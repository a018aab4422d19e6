"""`labelopt labels verify --teacher CKPT --sample N`: re-label random stored rows and compare.

Checksums prove a store unchanged since it was written, not that its labels are what its provenance
claims: anyone can write a consistent store. This re-runs the teacher the store names on N random
(index, view) rows, with stage one's own labeler, view policy and loader, and compares the answers
with the stored float16 values.

Tolerance: a stored value s passes against the fresh float32 value p when |s - p| <= ATOL + RTOL |p|,
RTOL = 2^-10 (float16's epsilon: rounding to float16 moves a value by at most half of that, relative)
and ATOL = 2^-14 (float16's smallest normal number: below it float16 steps are absolute). The slack over
pure rounding covers float32 noise from other batch shapes; a store made with --bf16 or on another kind
of device can differ by more (the per-row differences are reported).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...stages.labelers import LABELERS, LabelRequest
from ...store import LabelStore, StoreError, file_sha256
from ..data.datasets import PreparedDataset, open_dataset
from ..errors import UserError
from ..data.loading import block_loader
from ..run.checkpoints import load_teachers
from ..views.store_sets import store_views
from .prototypes import build_prototypes
from ..run.runtime import resolve_device
from ..views.policies import IdentityView

RTOL = 2.0 ** -10
ATOL = 2.0 ** -14
DEFAULT_SAMPLE = 64
BATCH = 256


@dataclass
class RelabelOptions:
    store: str
    data: str
    teachers: tuple[str, ...] = ()
    sample: int | None = None  # None: DEFAULT_SAMPLE
    device: str = "auto"
    seed: int | None = None  # None: fresh entropy, so a forger cannot know which rows are checked


def outside_tolerance(stored: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """Per element: does the stored value differ from the fresh one by more than float16 tolerance?"""
    return np.abs(stored - fresh) > ATOL + RTOL * np.abs(fresh)


def ordered_teachers(store: LabelStore, paths: tuple[str, ...]) -> list[str]:
    """The given checkpoints in the store's teacher order, once each sha256 matches the generator record."""
    recorded = [t for t in store.generator.get("teachers", []) if isinstance(t, dict)]
    by_sha: dict[str, list[str]] = {}
    for path in paths:
        sha = file_sha256(path) if Path(path).is_file() else None
        if sha is None:
            raise UserError(f"teacher checkpoint {path} does not exist")
        wanted = [t for t in recorded if t.get("checkpoint_sha256") == sha]
        if not wanted:
            names = ", ".join(f"{t.get('arch')} {t.get('checkpoint')} ({str(t.get('checkpoint_sha256'))[:12]})"
                              for t in recorded) or "no teacher"
            raise UserError(f"teacher checkpoint {path} (sha256 {sha[:12]}) is not the one store {store.path} was "
                            f"labelled with (it names {names}); pass that checkpoint")
        by_sha.setdefault(sha, []).append(path)
    ordered = [by_sha[t["checkpoint_sha256"]].pop() for t in recorded if by_sha.get(t.get("checkpoint_sha256"))]
    if len(ordered) != len(recorded) or len(paths) != len(recorded):
        raise UserError(f"store {store.path} was labelled by {len(recorded)} teacher checkpoint(s) and "
                        f"{len(paths)} were given; pass each of them once with --teacher")
    return ordered


def draw_rows(store: LabelStore, sample: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`sample` distinct (index, view) rows, sorted by index: int64 [n] each."""
    total = store.num_samples * store.num_views
    flat = np.sort(np.random.default_rng(seed).choice(total, size=min(sample, total), replace=False))
    return flat // store.num_views, flat % store.num_views


def read_images(data: PreparedDataset, split: str, indices: np.ndarray, train_decode: bool):
    """uint8 [n, 3, H, W] images and int64 [n] labels of the (distinct, sorted) sample indices, as stage one reads them."""
    loader = block_loader(data, split, indices.astype(np.uint64), min(BATCH, len(indices)), train_decode)
    images, labels, got = [], [], []
    for batch_images, batch_labels, batch_indices in loader:
        # FFCV reuses its output buffers: copy.
        images.append(batch_images.permute(0, 3, 1, 2).contiguous().clone())
        labels.append(batch_labels.view(-1).long().clone())
        got.append(batch_indices.view(-1).long().clone())
    order = torch.argsort(torch.cat(got))
    return torch.cat(images)[order], torch.cat(labels)[order]


def make_labeler(store: LabelStore, data: PreparedDataset, teacher_paths: list[str], device: torch.device, log):
    gen = store.generator
    method = gen.get("method")
    if method == "combine":
        raise UserError(f"store {store.path} combines {len(gen.get('members', []))} stores; re-label each member "
                        f"store with labels verify --teacher instead")
    labeler_cls = LABELERS.get(method)
    if labeler_cls is None:
        raise UserError(f"store {store.path} was made by method {method!r}, which this labelopt cannot re-run")
    options = gen.get("options", {}) if isinstance(gen.get("options"), dict) else {}
    teachers = load_teachers(teacher_paths, data, device)
    labeler = labeler_cls(teachers, store.temperature, mix_gt=float(options.get("mix_gt", 0.0)),
                          num_classes=data.num_classes, seed=int(options.get("seed", 0)))
    if getattr(labeler, "needs_prototypes", False):
        build_prototypes(labeler, data, device, BATCH, False, log)
        if "cosine_scale" not in options:  # a store from before the scale was fitted: its logits are the cosines
            labeler.cosine_scale = 1.0
    return labeler


@torch.no_grad()
def fresh_labels(labeler, policy, images, labels, sample_idx, params, device) -> tuple[np.ndarray, np.ndarray]:
    """The labeler's probabilities and logits (float32 [n, C]) for each row's image seen through its view."""
    probs, logits = [], []
    for start in range(0, len(sample_idx), BATCH):
        sl = slice(start, start + BATCH)
        viewed = policy.apply(images[sl].to(device), params[sl])
        out = labeler(LabelRequest(viewed, sample_idx[sl].to(device), labels[sl].to(device)))
        probs.append(out.probs.float().cpu())
        logits.append(out.logits.float().cpu() if out.logits is not None else torch.zeros(0))
    return torch.cat(probs).numpy(), (torch.cat(logits).numpy() if logits[0].numel() else None)


def compare_rows(store: LabelStore, indices, views, probs, logits) -> list[dict]:
    """Per row: the largest |stored - fresh| (targets, and logits when stored) and whether all are in tolerance."""
    rows = []
    if store.is_topk:
        idx, stored = store.topk_entries(indices, views)
        fresh = np.take_along_axis(probs, idx, axis=1)
        # The stored classes must also be the teacher's top k: nothing left out may beat the smallest kept.
        left_out = probs.copy()
        np.put_along_axis(left_out, idx, -np.inf, axis=1)
        rank_bad = left_out.max(1) > fresh.min(1) + ATOL + RTOL * fresh.min(1)
    else:
        stored = store.gather(torch.from_numpy(indices), torch.from_numpy(views)).numpy()
        fresh, rank_bad = probs, np.zeros(len(indices), bool)
    bad = outside_tolerance(stored, fresh).any(1) | rank_bad
    diff = np.abs(stored - fresh).max(1)
    logit_diff = logit_bad = None
    if store.has_logits and logits is not None:
        stored_logits = store.gather(torch.from_numpy(indices), torch.from_numpy(views), "logits").numpy()
        logit_diff = np.abs(stored_logits - logits).max(1)
        logit_bad = outside_tolerance(stored_logits, logits).any(1)
    for r in range(len(indices)):
        row = {"index": int(indices[r]), "view": int(views[r]), "max_abs_diff": float(diff[r]),
               "ok": not (bad[r] or (logit_bad is not None and logit_bad[r]))}
        if store.is_topk:
            row["topk_classes_ok"] = not bool(rank_bad[r])
        if logit_diff is not None:
            row["logits_max_abs_diff"] = float(logit_diff[r])
        rows.append(row)
    return rows


def replay_views(store: LabelStore, data: PreparedDataset):
    """Stage one's view policy and parameter source for this store, rebuilt from its `views` record."""
    spec = store.views.get("spec")
    if not isinstance(spec, str):
        raise UserError(f"store {store.path} does not record how its views were made (views.spec); only stores "
                        f"written by labelopt generate-labels can be re-labelled")
    seed = store.views.get("seed", store.generator.get("options", {}).get("seed", 0))
    split = store.dataset.get("split", "train")
    alpha = store.views.get("alpha") if spec.startswith("mix:") else None
    views = store_views(spec, data, int(seed), split, alpha)
    views.attach_bank(data, split)
    return views


def open_inputs(options: RelabelOptions) -> tuple[LabelStore, PreparedDataset, str]:
    try:
        store = LabelStore.open(options.store)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    data = open_dataset(options.data)
    split = store.dataset.get("split")
    if split not in data.splits:
        raise UserError(f"{options.data} has no '{split}' split, the split store {store.path} was made from; "
                        f"pass the prepared dataset the store belongs to")
    try:
        store.check_dataset(data.identity(split))
    except StoreError as exc:
        raise UserError(str(exc)) from None
    return store, data, split


def check(name: str, ok: bool, detail: str) -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail}


def relabel_check(options: RelabelOptions, log=print) -> dict:
    """Re-label a random sample of the store's rows; {"checks": [...], "relabel": {... per-row diffs}}."""
    sample = DEFAULT_SAMPLE if options.sample is None else options.sample
    if sample < 1:
        raise UserError(f"--sample must be at least 1, got {sample}")
    store, data, split = open_inputs(options)
    teacher_paths = ordered_teachers(store, tuple(options.teachers))
    device = resolve_device(options.device)
    views = replay_views(store, data)
    labeler = make_labeler(store, data, teacher_paths, device, log)
    seed = secrets.randbits(32) if options.seed is None else int(options.seed)
    indices, view_ids = draw_rows(store, sample, seed)
    unique = np.unique(indices)
    images, labels = read_images(data, split, unique, train_decode=not isinstance(views.policy, IdentityView))
    pos = np.searchsorted(unique, indices)
    named = ", ".join(f"{t.get('arch')} {t.get('checkpoint')}" for t in store.generator.get("teachers", []))
    checks = [check("teacher", True, f"sha256 matches the store's record ({named})" if named
                    else f"method {store.generator.get('method')} has no teacher")]

    regenerated = views.views_of(unique, images.shape[2], images.shape[3])  # [u, V, P], as stage one drew them
    stored = store.view_params(unique) if store.per_sample_params else \
        np.broadcast_to(store.view_params(), regenerated.shape)
    checks.append(check("views", np.array_equal(stored, regenerated),
                        f"{views.policy.name} parameters of {len(unique)} samples "
                        + ("match stage one's" if np.array_equal(stored, regenerated) else "differ from stage one's")))
    truth = store.labels()[unique]
    checks.append(check("ground truth", np.array_equal(truth, labels.numpy()),
                        f"stored labels of {len(unique)} samples "
                        + ("match the data" if np.array_equal(truth, labels.numpy()) else "differ from the data")))

    params = torch.from_numpy(np.ascontiguousarray(regenerated[pos, view_ids]))
    probs, logits = fresh_labels(labeler, views.policy, images[pos], labels[pos], torch.from_numpy(indices),
                                 params, device)
    rows = compare_rows(store, indices, view_ids, probs, logits)
    failed = [r for r in rows if not r["ok"]]
    worst = max(r["max_abs_diff"] for r in rows)
    checks.append(check("relabel", not failed,
                        f"{len(rows)} random rows re-labelled on {device}: max |stored - fresh| {worst:.2e}, "
                        f"{len(failed)} outside float16 tolerance"))
    return {"checks": checks,
            "relabel": {"seed": seed, "device": str(device), "sample": len(rows), "rtol": RTOL, "atol": ATOL,
                        "max_abs_diff": worst, "failed_rows": len(failed), "rows": rows}}
