"""`labelopt train`: a model from scratch on a prepared dataset, resumable and exactly reproducible on CPU."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch

from ...models import UnknownModelError, create_model
from ...stages.batch import ViewedBatch
from ...stages.losses import batch_cross_entropy
from ...stages.phases import NO_PHASES, Phases
from ..data.datasets import PreparedDataset
from ..data.holdout import hold_out
from ..data.normalize import Normalizer
from ..errors import UserError
from ..locks import output_lock
from .runs import prepare_run_dir, provenance, read_config, write_config
from .runtime import (DistInfo, barrier, check_precision, check_same_inputs, describe_job, device_for,
                      from_main, init_distributed, seed_everything)
from .train_loop import epoch_line, evaluate_epoch, save_epoch, train_epoch
from .batches import TeacherRows
from .prediction import held_out_split
from .packs import PackMember, PackMembers, PackNormalizer, recorded_layout
from .train_setup import set_up_run
from ..views.draws import AugmentViews, ViewSampler
from ..views.policies import get_view_policy
from .options import RESUME_FREE_OPTIONS, TrainOptions, open_training_data, resolve_options

def cross_entropy_objective(label_smoothing: float):
    def objective(model, inputs, batch: ViewedBatch, extra=None):
        logits = model(inputs)
        return batch_cross_entropy(logits, batch, label_smoothing), logits, {}
    return objective


def train(options: TrainOptions, *, on_epoch_end: Callable[[int], None] | None = None, log=print) -> Path:
    """Train from scratch (or continue with resume) and return the run folder."""
    dist_info = init_distributed(options.device)
    device = device_for(dist_info, options.device)
    check_precision(device, options.bf16)
    data = open_training_data(options)
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
                  extra: dict | None = None, phases: Phases = NO_PHASES) -> dict:
    return {
        "command": command,
        **dataclasses.asdict(options),
        **phases.record(),
        **(extra or {}),
        "milestones": list(options.milestones),
        "world_size": dist_info.world_size,
        "global_batch_size": options.batch_size * dist_info.world_size,
        "dataset": dataset_record(data),
        "validation": validation_record(data, options.val_fraction),
        "provenance": provenance(),
    }


def validation_record(data: PreparedDataset, fraction: float) -> dict | None:
    """config.json's record of the validation split best.pt is chosen on (None: no --val-fraction, no best.pt)."""
    split = hold_out(data, fraction)
    return None if split is None else {**split.record(), "selected_on": "val"}


def dataset_record(data: PreparedDataset) -> dict:
    """config.json's record of the data: the training split, and the held-out split each epoch is evaluated on
    (test_fingerprint; eval_split is written where that split is not test, e.g. ImageNet's val)."""
    split = held_out_split(data)
    record = {**data.identity("train"), "path": str(data.path),
              "test_fingerprint": data.fingerprint(split) if split else None}
    return record if split in (None, "test") else {**record, "eval_split": split}


def check_resume_matches(out: Path, config: dict) -> None:
    # a run from before --val-fraction had none, one from before --member no members
    previous = {"val_fraction": 0.0, "members": [], **read_config(out)}
    previous["pack_layout"] = recorded_layout(previous)
    config = json.loads(json.dumps(config))  # compare as stored: tuples become lists
    check_pack_matches(out, previous.get("pack"), config.get("pack"))
    for record in (previous, config):  # a member's folder may move with the run, as --out may
        if record.get("members"):
            record["members"] = [{k: v for k, v in m.items() if k != "out"} for m in record["members"]]
    changed = sorted(k for k, v in config.items()
                     if k not in RESUME_FREE_OPTIONS | {"provenance", "pack"} and previous.get(k) != v)
    if changed:
        detail = ", ".join(f"{k}: {previous.get(k)!r} -> {config[k]!r}" for k in changed[:3])
        raise UserError(f"--resume of {out} with other options ({detail}); rerun with the run's own options "
                        f"(see its config.json) or start a new run")


def check_pack_matches(out: Path, previous: dict | None, pack: dict | None) -> None:
    """A pack resumes with its own members (names, methods, stores, seeds), in its own order."""
    if previous is None or previous == pack:  # a pack from before its members were recorded: its seeds say
        return

    def listed(record):
        return "; ".join(f"{m['name']} ({m['method']}, seed {m['seed']}{', ' + m['labels'] if m['labels'] else ''})"
                         for m in (record or {}).get("members", [])) or "none"
    raise UserError(f"--resume of the pack in {out} with other members: it holds {listed(previous)}, and this "
                    f"command gives {listed(pack)}; pass its own members (see its config.json) or start a new pack")


def read_inputs(config: dict) -> dict:
    """What a run reads, less the paths it reads them at (each node reads its own copy): the ranks must agree."""
    source = config.get("teacher_source") or {}
    return {"dataset": {k: v for k, v in config["dataset"].items() if k != "path"},
            "label store or teacher": {k: v for k, v in source.items() if k != "path"}}


def fit(options: TrainOptions, data: PreparedDataset, model: torch.nn.Module, objective, dist_info: DistInfo,
        device: torch.device, **kwargs) -> Path:
    """`run_fit` holding the run folder's lock (rank 0 holds it for every rank under torchrun)."""
    with output_lock(Path(options.out), "run folder", enabled=dist_info.is_main):
        return run_fit(options, data, model, objective, dist_info, device, **kwargs)


def run_fit(options: TrainOptions, data: PreparedDataset, model: torch.nn.Module, objective, dist_info: DistInfo,
            device: torch.device, *, command: str, sampler: ViewSampler | None = None,
            teacher_rows: TeacherRows | None = None, capture: str = "step",
            extra_modules: torch.nn.Module | None = None, phases: Phases = NO_PHASES, config_extra: dict | None = None,
            pack: list[PackMember] | None = None, on_epoch_start=None, on_epoch_end=None, log=print) -> Path:
    """The shared training loop: views, optimizer, schedule, evaluation, checkpoints, resume.

    `objective(model, inputs, batch, extra)` returns (loss, logits, parts), parts the named terms of the loss
    (averaged per epoch into metrics.jsonl's train_loss_parts); `sampler` draws each step's views
    (default: fresh views of options.augment); `teacher_rows` gathers a label store's rows for the drawn views,
    ahead of the step, in the batch loader (None: no store); `capture`: what --compile may take in
    (train_setup.COMPILE_SCOPES: the whole step, the student alone, or nothing); `extra_modules` (a method's
    trainable parts) join the optimizer and last.pt, and reach the objective as `extra` (wrapped for DDP when
    they have parameters, so their gradients are averaged across ranks like the model's); `phases`: the method's
    warm-up, run before the recipe's epochs; `pack`: `model` is a pack of these members (pipeline/run/packs.py),
    each member's run folder written from the pack's epochs.
    """
    out = Path(options.out)
    sampler = sampler or AugmentViews(get_view_policy(options.augment, data.input_size))
    config = config_record(options, data, dist_info, command, {**(config_extra or {}), "views": sampler.describe()},
                           phases)
    check_same_inputs(dist_info, read_inputs(config))

    def prepare_on_main():  # the run folder is rank 0's; its refusal is every rank's
        prepare_run_dir(out, overwrite=options.overwrite, resume=options.resume)
        if options.resume:
            check_resume_matches(out, config)
    from_main(dist_info, prepare_on_main)
    if dist_info.is_main and dist_info.enabled:
        log(f"{command}: {describe_job(dist_info)}")
    normalize = (PackNormalizer(data.mean, data.std, device, len(pack), options.channels_last) if pack else
                 Normalizer(data.mean, data.std, device, channels_last=options.channels_last))
    run = set_up_run(options, data, model, objective, sampler, teacher_rows, extra_modules, phases, dist_info,
                     device, normalize, capture, log if dist_info.is_main else lambda _: None)
    if dist_info.is_main:
        write_config(out, config)
    if pack:
        run.pack = PackMembers(out, pack, options.resume) if dist_info.is_main else None
    if run.start_epoch >= run.total_epochs:
        log(f"{out}: already complete ({run.total_epochs} epochs)")
        return out
    for epoch in range(run.start_epoch, run.total_epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        record = train_epoch(run, epoch)
        if dist_info.is_main:
            evaluate_epoch(run, record)
            save_epoch(run, epoch, record)
            log(epoch_line(record, run.total_epochs))
        barrier(dist_info)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return out
