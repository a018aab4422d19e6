"""`labelopt train`: a model from scratch on a prepared dataset, resumable and exactly reproducible on CPU."""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..models import UnknownModelError, create_model
from ..stages.metrics import classification_metrics
from ..stages.sources import ViewedBatch
from .checkpoints import load_checkpoint, save_checkpoint
from .datasets import PreparedDataset, open_dataset
from .errors import UserError
from .limits import check_all
from .locks import output_lock
from .evaluation import eval_loader, predict
from .loading import make_loader
from .runs import MetricsLog, prepare_run_dir, provenance, read_config, write_config
from .runtime import (DistInfo, autocast, barrier, check_precision, device_for, init_distributed,
                      seed_everything)
from .schedules import Schedule, check_schedule_name, resolve_milestones
from .view_sampling import AugmentViews, ViewSampler
from .views import Normalizer, get_view_policy, view_policy_names

# Options that may differ between a run and its --resume without changing the result.
RESUME_FREE_OPTIONS = {"out", "resume", "overwrite", "device", "num_workers"}


@dataclass
class TrainOptions:
    data: str
    arch: str
    out: str
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: tuple[int, ...] | None = None
    gamma: float = 0.1
    label_smoothing: float = 0.0
    augment: str = "auto"
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = False
    num_workers: int | None = None
    resume: bool = False
    overwrite: bool = False
    warmup_epochs: int = 0  # set by a method with a warm-up phase (AB, FT): run before the `epochs` of the recipe
    warmup_milestones: tuple[int, ...] = ()  # set by such a method: lr x gamma at these warm-up epochs (KDSS)
    warmup_lr: float | None = None  # set by such a method: the warm-up's base lr (FT: 0.01); None: --lr


def default_augment(data: PreparedDataset) -> str:
    """Crop + flip for small fixed-size images (CIFAR recipe), random-resized-crop + flip otherwise."""
    return "cifar-crop-flip" if data.fixed_size and data.input_size <= 64 else "rrc-flip"


NUMERIC_OPTIONS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "gamma", "seed", "num_workers",
                   "label_smoothing")


def resolve_options(options: TrainOptions, data: PreparedDataset) -> TrainOptions:
    check_all(options, NUMERIC_OPTIONS)
    if options.resume and options.overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: pass only one")
    check_schedule_name(options.schedule)
    augment = default_augment(data) if options.augment == "auto" else options.augment
    if augment not in view_policy_names():
        raise UserError(f"unknown --augment '{augment}'; known: auto, {', '.join(view_policy_names())}")
    milestones = resolve_milestones(options.epochs, tuple(options.milestones) if options.milestones else None)
    return dataclasses.replace(options, augment=augment, milestones=milestones)


def cross_entropy_objective(label_smoothing: float):
    def objective(model, inputs, batch: ViewedBatch, extra=None):
        logits = model(inputs)
        return F.cross_entropy(logits, batch.labels, label_smoothing=label_smoothing), logits, {}
    return objective


def train(options: TrainOptions, *, on_epoch_end: Callable[[int], None] | None = None, log=print) -> Path:
    """Train from scratch (or continue with resume) and return the run folder."""
    dist_info = init_distributed(options.device)
    device = device_for(dist_info, options.device)
    check_precision(device, options.bf16)
    data = open_dataset(options.data)
    options = resolve_options(options, data)
    seed_everything(options.seed)  # before the model exists: its initial weights come from the seed
    try:
        model = create_model(options.arch, data.num_classes)
    except UnknownModelError as exc:
        raise UserError(str(exc)) from None
    objective = cross_entropy_objective(options.label_smoothing)
    return fit(options, data, model, objective, dist_info, device, command="train",
               on_epoch_end=on_epoch_end, log=log)


def config_record(options: TrainOptions, data: PreparedDataset, dist_info: DistInfo, command: str,
                  extra: dict | None = None) -> dict:
    return {
        "command": command,
        **dataclasses.asdict(options),
        **(extra or {}),
        "milestones": list(options.milestones),
        "world_size": dist_info.world_size,
        "global_batch_size": options.batch_size * dist_info.world_size,
        "dataset": {**data.identity("train"), "path": str(data.path), "test_fingerprint": data.fingerprint("test")
                    if "test" in data.splits else None},
        "provenance": provenance(),
    }


def check_resume_matches(out: Path, config: dict) -> None:
    previous = read_config(out)
    config = json.loads(json.dumps(config))  # compare as stored: tuples become lists
    changed = sorted(k for k, v in config.items()
                     if k not in RESUME_FREE_OPTIONS | {"provenance"} and previous.get(k) != v)
    if changed:
        detail = ", ".join(f"{k}: {previous.get(k)!r} -> {config[k]!r}" for k in changed[:3])
        raise UserError(f"--resume of {out} with other options ({detail}); rerun with the run's own options "
                        f"(see its config.json) or start a new run")


def fit(options: TrainOptions, data: PreparedDataset, model: torch.nn.Module, objective, dist_info: DistInfo,
        device: torch.device, **kwargs) -> Path:
    """`run_fit` holding the run folder's lock (rank 0 holds it for every rank under torchrun)."""
    with output_lock(Path(options.out), "run folder", enabled=dist_info.is_main):
        return run_fit(options, data, model, objective, dist_info, device, **kwargs)


def run_fit(options: TrainOptions, data: PreparedDataset, model: torch.nn.Module, objective, dist_info: DistInfo,
           device: torch.device, *, command: str, sampler: ViewSampler | None = None,
           extra_modules: torch.nn.Module | None = None, config_extra: dict | None = None, on_epoch_start=None,
           on_epoch_end=None, log=print) -> Path:
    """The shared training loop: views, optimizer, schedule, evaluation, checkpoints, resume.

    `objective(model, inputs, batch, extra)` returns (loss, logits, parts), parts the named terms of the loss
    (averaged per epoch into metrics.jsonl's train_loss_parts); `sampler` draws each step's views
    (default: fresh views of options.augment); `extra_modules` (a method's trainable parts) join the
    optimizer and last.pt, and reach the objective as `extra` (wrapped for DDP when they have parameters,
    so their gradients are averaged across ranks like the model's).
    """
    out = Path(options.out)
    sampler = sampler or AugmentViews(get_view_policy(options.augment, data.input_size))
    config = config_record(options, data, dist_info, command, {**(config_extra or {}), "views": sampler.describe()})
    if dist_info.is_main:
        prepare_run_dir(out, overwrite=options.overwrite, resume=options.resume)
        if options.resume:
            check_resume_matches(out, config)
    barrier(dist_info)

    state = load_checkpoint(out / "last.pt") if options.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        if dist_info.is_main:
            restore_best(out, state)
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    if extra_modules is not None:  # on the device, with resumed state, before DDP takes hold of it
        extra_modules.to(device)
        if state is not None and "extra" in state["training"]:
            extra_modules.load_state_dict(state["training"]["extra"])
    device_ids = [device.index] if device.type == "cuda" else None
    # A warm-up phase may train only a method's own modules: then the student's parameters get no gradient.
    train_model = DistributedDataParallel(model, device_ids=device_ids,
                                          find_unused_parameters=options.warmup_epochs > 0) \
        if dist_info.enabled else model
    train_extra = extra_modules
    if dist_info.enabled and extra_modules is not None and any(p.requires_grad for p in extra_modules.parameters()):
        # Buffers stay per rank (a method that keeps state across ranks synchronises it itself); a method may
        # leave some of its parts idle in a phase (a frozen head), hence find_unused_parameters.
        train_extra = DistributedDataParallel(extra_modules, device_ids=device_ids, broadcast_buffers=False,
                                              find_unused_parameters=True)
    trainable = list(model.parameters())
    if extra_modules is not None:
        trainable += [p for p in extra_modules.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=options.lr, momentum=options.momentum,
                                weight_decay=options.weight_decay)
    start_epoch, best = 0, {"top1": -1.0, "epoch": -1}
    if state is not None:
        optimizer.load_state_dict(state["training"]["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        best = dict(state["training"]["best"])
        torch.set_rng_state(state["training"]["torch_rng"])

    train_loader = make_loader(data, "train", options.batch_size, shuffle=True, seed=options.seed, drop_last=True,
                               distributed=dist_info.enabled, device=device, num_workers=options.num_workers)
    if len(train_loader) == 0:
        raise UserError(f"--batch-size {options.batch_size} is larger than the training split "
                        f"({data.num_samples('train')} images); use a smaller batch")
    test_loader = eval_loader(data, "test", device) if dist_info.is_main and "test" in data.splits else None
    normalize = Normalizer(data.mean, data.std, device, channels_last=options.channels_last)
    schedule = Schedule(options.schedule, options.lr, options.epochs, len(train_loader), options.milestones,
                        options.gamma, hold_epochs=options.warmup_epochs,
                        hold_milestones=tuple(options.warmup_milestones), hold_lr=options.warmup_lr)
    total_epochs = options.warmup_epochs + options.epochs

    metrics_log = None
    if dist_info.is_main:
        write_config(out, config)
        metrics_log = MetricsLog(out / "metrics.jsonl", keep_through_epoch=start_epoch - 1 if state else None)
    if start_epoch >= total_epochs:
        log(f"{out}: already complete ({total_epochs} epochs)")
        return out

    for epoch in range(start_epoch, total_epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        started = time.perf_counter()
        # View draws depend only on (seed, epoch, rank): a resumed epoch sees the same views.
        views_rng = torch.Generator().manual_seed(options.seed * 1_000_003 + epoch * 7919 + dist_info.rank)
        train_model.train()
        if train_extra is not None:
            train_extra.train()
        loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
        watch = DivergenceWatch(device)
        part_sums: dict[str, torch.Tensor] = {}
        bar = tqdm(train_loader.epoch(epoch), total=len(train_loader), desc=f"epoch {epoch + 1}/{total_epochs}",
                   unit="batch", leave=False, disable=None if dist_info.is_main else True)
        for step, (images, labels, indices) in enumerate(bar):
            lr = schedule.lr(epoch, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            viewed, views = sampler.draw(images, indices, views_rng)
            batch = ViewedBatch(viewed, labels, indices, views)
            with autocast(device, options.bf16):
                loss, logits, parts = objective(train_model, normalize(viewed), batch, train_extra)
            watch.observe(loss, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().float() * labels.shape[0]
            for name, value in parts.items():
                part_sums[name] = part_sums.get(name, 0.0) + value.detach().float() * labels.shape[0]
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += labels.shape[0]
            if step % 20 == 0:
                watch.check(epoch, total_epochs, len(train_loader), out, dist_info)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4g}")
        bar.close()
        watch.check(epoch, total_epochs, len(train_loader), out, dist_info)  # before anything of the epoch is saved
        train_seconds = time.perf_counter() - started
        record = {"epoch": epoch, "phase": "warmup" if epoch < options.warmup_epochs else "train",
                  "lr": schedule.lr(epoch, 0), "train_loss": (loss_sum / seen).item(),
                  "train_top1": 100.0 * correct.item() / seen, "train_seconds": round(train_seconds, 3),
                  "train_img_per_s": round(seen * dist_info.world_size / train_seconds, 1)}
        if part_sums:
            record["train_loss_parts"] = {name: (total / seen).item() for name, total in part_sums.items()}
        if dist_info.is_main:
            if test_loader is not None:
                logits, labels = predict(model, test_loader, normalize, bf16=options.bf16)
                test = classification_metrics(logits, labels)
                record.update({f"test_{k}": test[k] for k in ("top1", "top5", "nll", "ece")})
            metrics_log.append(record)
            improved = record.get("test_top1", record["train_top1"]) > best["top1"]
            if improved:
                best = {"top1": record.get("test_top1", record["train_top1"]), "epoch": epoch}
            payload = checkpoint_payload(options, data, model, epoch, record)
            training_state = {"optimizer": optimizer.state_dict(), "best": best, "torch_rng": torch.get_rng_state()}
            if extra_modules is not None:
                training_state["extra"] = {k: v.detach().cpu() for k, v in extra_modules.state_dict().items()}
            # last.pt first: if the disk fills while best.pt is written, the run can still be resumed.
            save_checkpoint(out / "last.pt", {**payload, "training": training_state})
            if improved:
                save_checkpoint(out / "best.pt", payload)
            log(epoch_line(record, total_epochs))
        barrier(dist_info)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return out


def restore_best(out: Path, state: dict) -> None:
    """last.pt is saved before best.pt, so a save that failed (a full disk) can leave best.pt behind last.pt: when
    last.pt's own epoch is the recorded best, best.pt is last.pt's weights."""
    best_epoch = state["training"]["best"]["epoch"]
    if best_epoch != state["epoch"]:
        return
    best_path = out / "best.pt"
    if best_path.is_file() and load_checkpoint(best_path).get("epoch") == best_epoch:
        return
    save_checkpoint(best_path, {k: v for k, v in state.items() if k not in ("training", "format", "version")})


class TrainingDiverged(UserError):
    """The loss became nan or inf: the run stops, keeping the last checkpoint of a finished epoch."""


class DivergenceWatch:
    """Remembers the first step of an epoch whose loss was not finite, without a device sync per step.

    `check` (called where the loop syncs anyway) stops the run on every rank at once under DDP.
    """

    def __init__(self, device: torch.device):
        self.never = torch.iinfo(torch.long).max
        self.first_bad = torch.full((), self.never, dtype=torch.long, device=device)
        self.bad_value = torch.zeros((), device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        value = loss.detach().float()
        new = ~torch.isfinite(value) & (self.first_bad == self.never)
        self.bad_value = torch.where(new, value, self.bad_value)
        self.first_bad = torch.where(new, torch.full_like(self.first_bad, step), self.first_bad)

    def check(self, epoch: int, epochs: int, steps: int, out: Path, dist_info: DistInfo) -> None:
        first_bad = self.first_bad.clone()
        if dist_info.enabled:
            torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MIN)
        step = int(first_bad.item())
        if step == self.never:
            return
        value = float(self.bad_value.item()) if int(self.first_bad.item()) == step else float("nan")
        last = out / "last.pt"
        kept = (f"the last good checkpoint is {last} ({epoch} epochs done)" if epoch > 0 and last.is_file()
                else "no epoch had finished, so there is no checkpoint")
        raise TrainingDiverged(f"the loss became {value} at epoch {epoch + 1}/{epochs}, step {step + 1}/{steps}; "
                               f"training stopped and {kept}; lower --lr (or the method's loss weights) and start "
                               f"a new run")


def checkpoint_payload(options: TrainOptions, data: PreparedDataset, model: torch.nn.Module, epoch: int,
                       record: dict) -> dict:
    return {
        "arch": options.arch,
        "num_classes": data.num_classes,
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "epoch": epoch,
        "metrics": record,
        "dataset": {**data.identity("train"), "mean": data.mean, "std": data.std, "input_size": data.input_size},
    }


def epoch_line(record: dict, epochs: int) -> str:
    parts = record.get("train_loss_parts") or {}
    terms = f" ({' '.join(f'{k} {v:.4g}' for k, v in parts.items())})" if len(parts) > 1 else ""
    text = (f"epoch {record['epoch'] + 1}/{epochs}  loss {record['train_loss']:.4f}{terms}  "
            f"train {record['train_top1']:.2f}%")
    if "test_top1" in record:
        text += f"  test {record['test_top1']:.2f}%  nll {record['test_nll']:.4f}  ece {record['test_ece']:.4f}"
    return text + f"  {record['train_img_per_s']:.0f} img/s"
