"""A training run's set-up: the resumed state, the modules on the device (DDP-wrapped under torchrun), the
optimizer, the loaders and the schedule, gathered in one `TrainingRun` that the epoch loop reads."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from .checkpoints import load_checkpoint, save_best
from ...stages.phases import Phases
from ..data.datasets import PreparedDataset
from ..errors import UserError
from .options import TrainOptions
from .prediction import eval_loader, held_out_split
from ..data.holdout import hold_out
from ..data.loading import SplitLoader, make_loader
from .batches import BatchLoader, TeacherRows
from .packs import PackMembers
from .runs import MetricsLog
from .runtime import DistInfo, from_main
from .schedules import Schedule
from ..views.draws import ViewSampler
from ..data.normalize import Normalizer
from ...stages.batch import ViewedBatch


@dataclass
class TrainingRun:
    """Everything an epoch needs; `model` and `extra_modules` are the bare modules (evaluation, checkpoints),
    `train_model` and `train_extra` the ones the steps call (DDP-wrapped when distributed)."""

    options: TrainOptions
    data: PreparedDataset
    out: Path
    dist_info: DistInfo
    device: torch.device
    model: torch.nn.Module
    train_model: torch.nn.Module
    extra_modules: torch.nn.Module | None
    train_extra: torch.nn.Module | None
    forward: Callable[[ViewedBatch], tuple]  # a step before backward: (loss, figures, parts); compile_step's
    phases: Phases
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    batches: BatchLoader  # the training split's finished batches: views drawn, store rows gathered
    test_loader: SplitLoader | None  # the held-out split's (eval_split: test, or val for ImageNet folders)
    normalize: Normalizer
    metrics_log: MetricsLog | None
    best: dict
    start_epoch: int
    step_mode: StepMode = field(default_factory=lambda: StepMode())
    pack: PackMembers | None = None  # a pack's members' run folders (pipeline/run/packs.py)
    eval_split: str | None = None  # the split test_loader reads
    val_loader: SplitLoader | None = None  # --val-fraction's validation split (rank 0), where best.pt is chosen

    @property
    def total_epochs(self) -> int:
        return self.phases.warmup_epochs + self.options.epochs


def restore_best(out: Path, state: dict) -> None:
    """last.pt is saved before best.pt, so a save that failed (a full disk) can leave best.pt behind last.pt: when
    last.pt's own epoch is the recorded best, best.pt is last.pt's weights."""
    best_epoch = state["training"]["best"]["epoch"]
    if best_epoch != state["epoch"]:
        return
    best_path = out / "best.pt"
    if best_path.is_file() and load_checkpoint(best_path).get("epoch") == best_epoch:
        return
    save_best(out, {k: v for k, v in state.items() if k not in ("training", "format", "version")},
              state["training"]["best"])


def place_modules(options: TrainOptions, model, extra_modules, warmup: bool, state: dict | None, dist_info: DistInfo,
                  device: torch.device):
    """The model and a method's modules on the device with any resumed weights, then their DDP wrappers.

    Returns (model, train_model, train_extra)."""
    if state is not None:
        model.load_state_dict(state["model"])
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    if extra_modules is not None:  # on the device, with resumed state, before DDP takes hold of it
        extra_modules.to(device)
        if state is not None and "extra" in state["training"]:
            extra_modules.load_state_dict(state["training"]["extra"])
    if not dist_info.enabled:
        return model, model, extra_modules
    device_ids = [device.index] if device.type == "cuda" else None
    # A warm-up phase may train only a method's own modules: then the student's parameters get no gradient.
    train_model = DistributedDataParallel(model, device_ids=device_ids,
                                          find_unused_parameters=warmup)
    train_extra = extra_modules
    if extra_modules is not None and any(p.requires_grad for p in extra_modules.parameters()):
        # Buffers stay per rank (a method that keeps state across ranks synchronises it itself); a method may
        # leave some of its parts idle in a phase (a frozen head), hence find_unused_parameters.
        train_extra = DistributedDataParallel(extra_modules, device_ids=device_ids, broadcast_buffers=False,
                                              find_unused_parameters=True)
    return model, train_model, train_extra


# What --compile takes into torch.compile, from the most to the least: "step" (the student and the method's loss,
# one graph: nothing in the step runs on the CPU or across processes), "student" (its forward and backward alone:
# an online teacher or DDP's all-reduce runs in the step) and "eager" (the method hooks the student's layers).
COMPILE_SCOPES = ("step", "student", "eager")


@dataclass
class StepMode:
    """How the student's step runs: eager, compiled, or compiled and captured in CUDA graphs (which then start
    each step with a mark, so a step's outputs are read before the next replay overwrites them)."""

    graphs: bool = False
    compile_pending: bool = False  # the first compiled step, whose time is the compile's, is still to come
    scope: str = "eager"  # COMPILE_SCOPES: what the compiled code holds

    @property
    def compiled(self) -> bool:
        return self.scope != "eager"


def step_forward(objective, normalize: Normalizer, train_model, train_extra):
    """The part of a step before backward, on a finished batch: (loss, its step_figures, the loss parts)."""
    def forward(batch: ViewedBatch):
        loss, logits, parts = objective(train_model, normalize(batch.images), batch, train_extra)
        return loss, step_figures(loss, logits, batch.labels, parts), parts
    return forward


def step_figures(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, parts: dict) -> torch.Tensor:
    """What the epoch's record needs of a step, as one float32 vector made beside the loss (inside a compiled
    step, so the loop copies one tensor): [loss, each logged part, each member's correct count]."""
    predicted = logits.detach().argmax(-1)  # [B], or [B, G] for a pack's members
    correct = (predicted == labels.view(-1, *[1] * (predicted.dim() - 1))).sum(0)
    figures = [loss.detach().float().view(1), *(value.detach().float().view(1) for value in parts.values())]
    return torch.cat([*figures, correct.float().view(-1)])


def compile_step(options: TrainOptions, objective, normalize: Normalizer, train_model, train_extra, capture: str,
                 dist_info: DistInfo, device: torch.device, log):
    """The forward the steps call, and how it runs. Under --compile: torch.compile of `capture`'s scope, in CUDA
    graphs on a single GPU; the optimizer and the copy of the step's figures (step_figures) stay eager."""
    eager = step_forward(objective, normalize, train_model, train_extra)
    if not options.compile:
        return eager, StepMode()
    if capture == "eager":
        log("--compile: this method reads the student's features through forward hooks added every step, which a "
            "compiled student would not run; it trains eager")
        return eager, StepMode()
    # DDP's gradient all-reduce runs inside backward, which CUDA graphs cannot hold: compiled without graphs, and
    # the student alone (DDP's hooks stay outside a traced loss).
    graphs = device.type == "cuda" and not dist_info.enabled
    mode = "reduce-overhead" if graphs else "default"
    scope = "student" if dist_info.enabled else capture
    if scope == "student":
        forward = step_forward(objective, normalize, torch.compile(train_model, mode=mode), train_extra)
        return forward, StepMode(graphs=graphs, compile_pending=True, scope=scope)
    compiled = torch.compile(eager, mode=mode)

    def forward(batch: ViewedBatch):
        # The sample indices and view keys live on the CPU (the store rows they keyed are already on the device):
        # kept out of the graph, which then holds device tensors only, as CUDA graphs need.
        return compiled(dataclasses.replace(batch, indices=None, views=None))
    return forward, StepMode(graphs=graphs, compile_pending=True, scope=scope)


def make_optimizer(options: TrainOptions, model, extra_modules) -> torch.optim.Optimizer:
    trainable = list(model.parameters())
    if extra_modules is not None:
        trainable += [p for p in extra_modules.parameters() if p.requires_grad]
    return torch.optim.SGD(trainable, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay)


def make_loaders(options: TrainOptions, data: PreparedDataset, dist_info: DistInfo, device: torch.device,
                 sampler: ViewSampler, teacher_rows: TeacherRows | None, log=print):
    """(the training batches, the held-out split's loader or None, the validation split's loader or None: only
    rank 0 evaluates, the held-out split where the data has one (test, else val), the validation split where
    --val-fraction holds one out of the training split, whose batches then never draw its images)."""
    order_seed = options.seed if options.order_seed is None else options.order_seed
    holdout = hold_out(data, options.val_fraction)
    kept = None if holdout is None else holdout.kept
    train_loader = make_loader(data, "train", options.batch_size, shuffle=True, seed=order_seed, drop_last=True,
                               distributed=dist_info.enabled, device=device, num_workers=options.num_workers,
                               indices=kept)
    count = data.num_samples("train") if kept is None else kept.size
    if len(train_loader) == 0:
        held = "" if holdout is None else " less its validation split"
        raise UserError(f"--batch-size {options.batch_size} is larger than the training split{held} "
                        f"({count} images); use a smaller batch")
    note = dropped_note(train_loader, count, options.batch_size, dist_info.world_size)
    if note and dist_info.is_main:
        log(note)
    split = held_out_split(data)
    test_loader = eval_loader(data, split, device) if dist_info.is_main and split is not None else None
    val_loader = eval_loader(data, "train", device, holdout.held) if dist_info.is_main and holdout else None
    return BatchLoader(train_loader, sampler, device, teacher_rows), test_loader, val_loader


def dropped_note(train_loader: SplitLoader, num_samples: int, batch_size: int, world_size: int) -> str | None:
    """The one line that says how many training images each epoch leaves out (its last partial batch), or None."""
    kept = train_loader.num_images() * world_size
    if kept >= num_samples:
        return None
    batch = f"{batch_size}" if world_size == 1 else f"{batch_size} x {world_size} processes"
    return (f"note: each epoch trains on {kept:,} of the {num_samples:,} training images in full batches of "
            f"{batch}; the rest ({num_samples - kept:,}, different images each epoch) is dropped as a partial batch")


def set_up_run(options: TrainOptions, data: PreparedDataset, model, objective, sampler: ViewSampler,
               teacher_rows: TeacherRows | None, extra_modules, phases: Phases, dist_info: DistInfo,
               device: torch.device, normalize: Normalizer, capture: str = "step", log=print) -> TrainingRun:
    """A TrainingRun from a prepared run folder (a new one, or one to resume from its last.pt)."""
    out = Path(options.out)
    # Rank 0's last.pt for every rank: the run folder may be on rank 0's node alone.
    state = from_main(dist_info, lambda: load_checkpoint(out / "last.pt")) if options.resume else None
    if state is not None and dist_info.is_main:
        restore_best(out, state)
    model, train_model, train_extra = place_modules(options, model, extra_modules, phases.warmup_epochs > 0, state,
                                                    dist_info, device)
    forward, step_mode = compile_step(options, objective, normalize, train_model, train_extra, capture, dist_info,
                                      device, log)
    optimizer = make_optimizer(options, model, extra_modules)
    start_epoch, best = 0, {"top1": -1.0, "epoch": -1}
    if state is not None:
        optimizer.load_state_dict(state["training"]["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        best = dict(state["training"]["best"])
        torch.set_rng_state(state["training"]["torch_rng"])
    batches, test_loader, val_loader = make_loaders(options, data, dist_info, device, sampler, teacher_rows, log)
    schedule = Schedule(options.schedule, options.lr, options.epochs, len(batches), options.milestones,
                        options.gamma, hold_epochs=phases.warmup_epochs, hold_milestones=phases.warmup_milestones,
                        hold_lr=phases.warmup_lr)
    metrics_log = None
    if dist_info.is_main:
        metrics_log = MetricsLog(out / "metrics.jsonl", keep_through_epoch=start_epoch - 1 if state else None)
    return TrainingRun(options, data, out, dist_info, device, model, train_model, extra_modules, train_extra,
                       forward, phases, optimizer, schedule, batches, test_loader, normalize, metrics_log,
                       best, start_epoch, step_mode, eval_split=held_out_split(data), val_loader=val_loader)
