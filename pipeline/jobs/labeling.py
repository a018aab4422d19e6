"""`labelopt generate-labels`: run teachers over every stored view of a split into a label store.

Rows are written in blocks; a block is the unit of progress, so a killed run,
started again with the same command, does only the blocks it had not finished.
Under torchrun, ranks take alternate pending blocks and rank 0 assembles the store.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ... import __version__
from ...models import tap_names
from ...stages.labelers import DEFAULT_TEMPERATURE, LABELERS, LabelRequest
from ...stages.teachers import Teacher
from ...store import StoreError, StoreLayout, StoreWriter
from ...store.layout import compression_for, partial_block_rows
from ...store.schema import STORABLE_TAPS
from ..run.checkpoints import load_teachers
from ..data.datasets import PreparedDataset, open_dataset
from ..atomic import check_output_file
from ..errors import UserError
from ..limits import check_all
from ..locks import output_lock
from ..progress import Progress
from ..data.loading import block_loader
from ..run.runtime import (autocast, to_device, barrier, check_precision, check_same_inputs, describe_job, device_for,
                           init_distributed)
from ..views.store_sets import store_views
from ..views.space import ViewSpace
from .block_writes import BlockWrites
from .label_ranks import open_on_main, wait_for_blocks
from .prototypes import build_prototypes, share_prototypes
from ..views.policies import IdentityView


@dataclass
class GenerateOptions:
    data: str
    out: str
    teachers: tuple[str, ...] = ()
    method: str = "sl"
    split: str = "train"
    views: str = "identity"
    temperature: float = DEFAULT_TEMPERATURE
    logits: bool = False
    features: tuple[str, ...] = ()
    topk: int | None = None
    mix_gt: float = 0.0
    mix_alpha: float | None = None  # --views mix:POLICY:K: the Beta parameter (None: the policy's usual one)
    seed: int = 0
    batch_size: int | None = None  # None: default_batch_size(device)
    block_rows: int | None = None  # None: default_block_rows(the store's views per sample)
    device: str = "auto"
    resolution: int | None = None  # JPEG datasets: the side the teacher sees (None: as prepared)
    bf16: bool = False
    channels_last: bool = False  # the teacher's input and weights in channels_last (faster convolutions on a GPU)
    compile: bool = False  # torch.compile the teacher's forward (CUDA graphs on a GPU; not with --features)
    layout: str = "auto"  # how the store is written: compressed, contiguous (read in place), auto (contiguous from 1 GiB)
    overwrite: bool = False


def generate_command(options: GenerateOptions) -> str:
    """The generate-labels command these options are (paths as given, less --out): how a store's card says it was
    made."""
    import shlex

    args = ["labelopt", "generate-labels", "--data", options.data, "--split", options.split, "--method",
            options.method, "--views", options.views, "--temperature", f"{options.temperature:g}", "--seed",
            str(options.seed), "--block-rows", str(options.block_rows)]
    for teacher in options.teachers:
        args += ["--teacher", str(teacher)]
    for flag, value in (("--mix-gt", options.mix_gt or None), ("--mix-alpha", options.mix_alpha),
                        ("--topk", options.topk)):
        if value is not None:
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    for tap in options.features:
        args += ["--features", tap]
    args += ["--logits"] * options.logits + ["--bf16"] * options.bf16 + ["--channels-last"] * options.channels_last
    args += ["--compile"] * options.compile
    if options.resolution is not None:
        args += ["--resolution", str(options.resolution)]
    # No --out: a store's bytes do not depend on where it was written (a moved or copied store stays identical).
    return " ".join(shlex.quote(a) for a in args)


def check_method(options: GenerateOptions, labeler_cls) -> None:
    n = len(options.teachers)
    low, high = labeler_cls.min_teachers, labeler_cls.max_teachers
    if n < low or (high is not None and n > high):
        want = {(0, 0): "no --teacher", (1, 1): "exactly one --teacher", (2, None): "two or more --teacher"}[(low, high)]
        raise UserError(f"--method {options.method} takes {want} (got {n})")
    check_all(options, ("temperature", "mix_gt", "mix_alpha", "topk", "seed", "batch_size", "block_rows",
                        "resolution"))
    if options.logits and n > 1:
        raise UserError("--logits with an ensemble: the mean of the members' logits is not the ensemble's label, so "
                        "ensemble stores hold soft labels only; drop --logits (distil from the store with sl or "
                        "sl-kd, or run kd online with one --teacher)")
    if options.method == "random" and (options.logits or options.features):
        raise UserError("--method random has no teacher: drop --logits and --features")
    if options.features and n != 1:
        raise UserError("--features needs exactly one teacher (an ensemble's members have different embeddings)")


def check_taps(options: GenerateOptions, teachers: list[Teacher]) -> None:
    for tap in options.features:
        if tap not in STORABLE_TAPS:
            raise UserError(f"--features {tap}: only 1-D embeddings can be stored ({', '.join(STORABLE_TAPS)}); "
                            f"stage maps come from an online --teacher in train-student")
        if tap not in tap_names(teachers[0].arch):
            raise UserError(f"--features {tap}: {teachers[0].arch} has no such tap")


BLOCK_MEMORY_LIMIT = 8 * 2 ** 30  # bytes of float32 teacher outputs held for one block before it is written


def check_block_memory(options: GenerateOptions, layout: StoreLayout) -> None:
    """A block's outputs (every view of --block-rows samples) are held in memory: refuse a size that cannot fit."""
    rows = min(options.block_rows, layout.num_samples)
    width = layout.num_classes * (2 if layout.logits else 1) + sum(layout.features.values())
    need = rows * layout.num_views * width * 4
    if need > BLOCK_MEMORY_LIMIT:
        fit = BLOCK_MEMORY_LIMIT // (layout.num_views * width * 4)
        if fit < 1:
            raise UserError(f"one sample's teacher outputs alone would take {need / rows / 2**30:.1f} GiB of memory "
                            f"({layout.num_views} views x {width} values); store fewer views")
        raise UserError(f"--block-rows {options.block_rows} would hold {need / 2**30:.1f} GiB of teacher outputs in "
                        f"memory ({layout.num_views} views x {width} values per sample); use --block-rows {fit} "
                        f"or less")


BLOCK_ROWS = 256  # samples per block of a store with 4 or more views per sample
BLOCK_VIEW_ROWS = 1024  # the (sample, view) rows a block of fewer views per sample holds at least


def default_block_rows(num_views: int) -> int:
    """256 samples a block, or for a store of 1-3 views per sample a multiple of 256 that makes at least 1,024
    (sample, view) rows. A block costs a file, an fsync and an HDF5 chunk whatever its size: over 50,000 images an
    identity store's 256-row blocks made the whole job 1.6x and its assembly 2.5x as long as 1,024-row ones did
    (benchmarks/stage_one_overhead.py)."""
    return BLOCK_ROWS * max(1, -(-BLOCK_VIEW_ROWS // (BLOCK_ROWS * num_views)))


def default_batch_size(device: torch.device) -> int:
    """512 images per teacher batch on a GPU; 64 on a CPU, where a CIFAR resnet56 runs 1.8x faster per image at
    64 than at 512 (the activations of a large batch spill out of the caches)."""
    return 512 if device.type == "cuda" else 64


def generate_labels(options: GenerateOptions, log=print) -> Path:
    labeler_cls = LABELERS.get(options.method)
    if labeler_cls is None:
        raise UserError(f"unknown --method '{options.method}'; known: {', '.join(sorted(LABELERS))}")
    check_method(options, labeler_cls)
    dist_info = init_distributed(options.device)
    device = device_for(dist_info, options.device)
    check_precision(device, options.bf16)
    if options.batch_size is None:
        options = replace(options, batch_size=default_batch_size(device))
    check_output_file(Path(options.out), options.overwrite, "label store")
    data = open_dataset(options.data).at_resolution(options.resolution)
    n, num_classes = data.num_samples(options.split), data.num_classes
    if options.topk is not None and not 1 <= options.topk < num_classes:
        raise UserError(f"--topk must be between 1 and {num_classes - 1} for {num_classes} classes")
    teachers = load_teachers(options.teachers, data, device, channels_last=options.channels_last)
    check_taps(options, teachers)
    compile_teachers(options, teachers, device, log if dist_info.is_main else lambda _: None)
    views = store_views(options.views, data, options.seed, options.split, options.mix_alpha)
    if options.block_rows is None:  # a stopped run resumes in its own blocks, whatever today's default
        stopped = None if options.overwrite else partial_block_rows(Path(options.out))
        options = replace(options, block_rows=stopped or default_block_rows(views.num_views))
    views.attach_bank(data, options.split)  # mixed views: every partner's pixels (refused where they do not fit)
    if views.mixed and dist_info.is_main:
        log(f"generate-labels: {views.policy.bank.describe()}")
    labeler = labeler_cls(teachers, options.temperature, mix_gt=options.mix_gt, num_classes=num_classes,
                          seed=options.seed)
    fitted = {}
    if getattr(labeler, "needs_prototypes", False):
        build_prototypes(labeler, data, device, options.batch_size, options.bf16, log, dist_info)
        fitted = share_prototypes(labeler, dist_info, device)
    feature_dims = {}
    if options.features:
        probe = torch.zeros(1, 3, data.input_size, data.input_size, dtype=torch.uint8, device=device)
        _, feats = teachers[0].outputs(probe, options.features)
        feature_dims = {k: int(v.shape[1]) for k, v in feats.items()}
    layout = StoreLayout(num_samples=n, num_views=views.num_views, num_classes=num_classes, topk=options.topk,
                         logits=options.logits, features=feature_dims,
                         param_size=len(views.policy.param_names), per_sample_params=views.per_sample,
                         block_rows=options.block_rows)
    check_block_memory(options, layout)
    header = {
        "labelopt_version": __version__,
        "dataset": {**data.identity(options.split), "class_names": data.class_names},
        "generator": {"method": options.method, "temperature": options.temperature,
                      "command": generate_command(options),
                      "options": {"mix_gt": options.mix_gt, "seed": options.seed, "topk": options.topk,
                                  "bf16": options.bf16, "channels_last": options.channels_last,
                                  "compile": options.compile,
                                  "device_type": device.type, **fitted},
                      "teachers": [t.identity for t in teachers]},
        "views": views.record(),
    }
    check_same_inputs(dist_info, {"dataset": header["dataset"], "teacher": header["generator"]["teachers"]})
    # Rank 0 holds the store's lock for every rank, and creates (or replaces) the partial store first.
    with output_lock(Path(options.out), "label store", enabled=dist_info.is_main):
        return write_store(options, header, layout, views, labeler, data, device, dist_info, log)


def write_store(options: GenerateOptions, header: dict, layout: StoreLayout, views: ViewSpace, labeler,
                data: PreparedDataset, device, dist_info, log) -> Path:
    num_classes = data.num_classes
    # Rank 0 opens the store (cleaning a killed run's leftovers) and lists the pending blocks before any rank writes.
    writer, pending = open_on_main(dist_info, Path(options.out), lambda: open_writer(
        options, header, layout, views, overwrite=options.overwrite, main=True))
    if writer is None:
        writer = open_writer(options, header, layout, views, overwrite=options.overwrite, main=False)
    mine = pending[dist_info.rank::dist_info.world_size]
    if dist_info.is_main and dist_info.enabled:
        log(f"generate-labels: {describe_job(dist_info)}, {len(pending)} blocks split between them")
    if dist_info.is_main and len(pending) < layout.num_blocks():
        log(f"generate-labels: resuming, {len(pending)} of {layout.num_blocks()} blocks left")
    if mine:
        rows = np.concatenate([np.arange(*layout.block_range(b)) for b in mine]).astype(np.uint64)
        # Few views per row (identity): several blocks per loader batch, so the teacher still sees --batch-size
        # images at a time. Only the last block of the store can be short, and it comes last in `mine`.
        per_batch = max(1, options.batch_size // (options.block_rows * views.num_views))
        groups = [mine[i:i + per_batch] for i in range(0, len(mine), per_batch)]
        loader = block_loader(data, options.split, rows, options.block_rows * per_batch,
                              train_decode=not isinstance(views.policy, IdentityView))
        total = int(len(rows)) * views.num_views
        share = f" (rank 0's share of {dist_info.world_size})" if dist_info.enabled else ""
        with Progress(total, f"generate-labels: labelling{share}", enabled=dist_info.is_main) as bar, \
                BlockWrites(writer, layout, device) as writes:
            for group, (images, labels, indices) in zip(groups, loader):
                writes.submit(group, label_block(labeler, views, options, num_classes, images, labels, indices,
                                                 device, bar))
            labeler.check_outputs()  # the last batches' verdicts, before their blocks count as written
    barrier(dist_info)
    if not dist_info.is_main:
        return Path(options.out)
    wait_for_blocks(writer, pending, dist_info)
    try:
        return writer.finish()
    except StoreError as exc:
        raise UserError(str(exc)) from None


def open_writer(options: GenerateOptions, header: dict, layout: StoreLayout, views: ViewSpace, *,
                overwrite: bool, main: bool) -> StoreWriter:
    try:
        return StoreWriter(Path(options.out), header, layout, overwrite=overwrite,
                           shared_view_params=None if views.per_sample else views.shared_params.numpy(),
                           compression=compression_for(options.layout, layout), clean_stale=main)
    except StoreError as exc:
        raise UserError(str(exc)) from None


def compile_teachers(options: GenerateOptions, teachers: list[Teacher], device: torch.device, log) -> None:
    """--compile: each teacher's forward through torch.compile, captured in CUDA graphs on a GPU. Taps are forward
    hooks added per batch, which a compiled model would not run: with --features the teachers stay eager."""
    if not options.compile:
        return
    if options.features:
        log("generate-labels --compile: --features reads the teacher through forward hooks, which a compiled model "
            "would not run; the teacher runs eager")
        return
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    for teacher in teachers:
        teacher.model = FixedRows(torch.compile(teacher.model, mode=mode), options.batch_size)


class FixedRows(torch.nn.Module):
    """A compiled teacher fed `rows` images at every call: a shorter slice (a block's or the store's last) is padded
    with zeros and its outputs cut back. One shape means one compile and one CUDA graph; a second shape would make
    torch.compile compile the teacher again for dynamic shapes, which cost seconds in the middle of the run."""

    def __init__(self, compiled: torch.nn.Module, rows: int):
        super().__init__()
        self.compiled, self.rows = compiled, rows

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        short = self.rows - images.shape[0]
        if short <= 0:
            return self.compiled(images)
        padded = images.new_zeros((self.rows, *images.shape[1:]))
        if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last):
            padded = padded.contiguous(memory_format=torch.channels_last)  # the layout the teacher was compiled for
        padded[:images.shape[0]] = images
        return self.compiled(padded)[:images.shape[0]]


def label_block(labeler, views: ViewSpace, options: GenerateOptions, num_classes: int, images, labels, indices,
                device, bar) -> dict:
    """Teacher outputs for every (row, view) of one block, [rows, V, ...] tensors left on the device (BlockWrites
    copies them out), with the host labels and view parameters."""
    images = to_device(images.permute(0, 3, 1, 2), device)  # out of FFCV's reused buffer first
    host_labels = labels.view(-1).to(torch.long, copy=True)
    labels = to_device(host_labels, device)
    indices = indices.view(-1).to(torch.long, copy=True)
    rows, v = images.shape[0], views.num_views
    params = views.views_of(indices.numpy(), images.shape[2], images.shape[3])  # [rows, V, P]
    flat_params = torch.from_numpy(params.reshape(rows * v, -1))
    row_of = torch.arange(rows).repeat_interleave(v)
    # The slices index these on the device: a per-slice copy from pageable memory would make the host wait for the
    # GPU at every slice. Mixed views keep theirs on the host (their partners are looked up in the pixel bank there).
    device_rows = to_device(row_of, device)
    device_params = flat_params if views.mixed else to_device(flat_params, device)
    # The block's outputs stay on the device until its last slice: copying each slice out would make the host
    # wait for the GPU every slice (bare inference does not), and a per-slice host copy runs on every core.
    probs = torch.empty(rows * v, num_classes, dtype=torch.float32, device=device)
    logits_out = torch.empty_like(probs) if options.logits else None
    feats_out: dict[str, torch.Tensor] = {}
    for start in range(0, rows * v, options.batch_size):
        sl = slice(start, min(start + options.batch_size, rows * v))
        r = device_rows[sl]
        viewed = views.pixels(images[r], device_params[sl])
        if options.compile and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the previous slice's outputs are already copied out
        with autocast(device, options.bf16):
            out = labeler(LabelRequest(viewed, indices[row_of[sl]], labels[r], tuple(options.features)))
        probs[sl] = out.probs.float()
        if logits_out is not None:
            logits_out[sl] = out.logits.float()
        for tap, value in out.features.items():
            feats_out.setdefault(tap, torch.empty(rows * v, value.shape[1], device=device))[sl] = value.float()
        bar.update(sl.stop - sl.start)
    shape = lambda t: t.view(rows, v, -1)  # on the device: BlockWrites copies them out
    return {"targets": shape(probs), "labels": host_labels.numpy(),
            "logits": shape(logits_out) if logits_out is not None else None,
            "features": {k: shape(t) for k, t in feats_out.items()} or None,
            "view_params": params if views.per_sample else None}
