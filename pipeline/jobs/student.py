"""`labelopt train-student`: stage two, a student trained from a label store or an online teacher.

The store is checked against the data before the first step (fingerprint, N,
classes, views, signals); the method's distiller gets its teacher signals from a
source that is either the store or the teachers run online, through one interface.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ...models import FeatureTaps, UnknownModelError, create_model, feature_shapes
from ...models.packing import pack_models
from ...stages.distillers import (FEATURE_PREFIX, SIGNAL_TARGETS, DistillContext, Distiller, UnknownMethodError,
                                 get_distiller)
from ...stages.labelers import DEFAULT_TEMPERATURE, EnsembleLabeler, SoftLabeler
from ...stages.batch import ViewedBatch
from ...stages.teacher_sources import OnlineSource, StoreSource, TeacherSource
from ...store import LabelStore, StoreError
from ...store.remote import is_url, local_store
from ..data.datasets import PreparedDataset
from ..data.holdout import training_indices
from ..errors import UserError
from ..run.checkpoints import load_teachers
from ..run.runtime import check_precision, device_for, init_distributed, seed_everything
from ..run.options import TrainOptions, open_training_data, resolve_options
from ..run.packs import PackViews, pack_objective, pack_teacher_rows
from ..run.training import fit
from ..views.draws import AugmentViews, ViewSampler, with_copies
from ..views.space import sampler_for_store
from ..views.mix_choice import check_mix_choice, check_store_mixes, mixed_sampler
from ..views.policies import default_augment, get_view_policy

NAMED_FLAGS = ("ce_weight", "kd_weight", "label_smoothing", "temperature")  # options with a flag of their own


@dataclass
class StudentOptions(TrainOptions):
    labels: str | None = None  # a label store
    expect_digest: str | None = None  # a pin of the store's root digest (--expect-digest): any other store is refused
    teachers: tuple[str, ...] = ()  # or online teachers
    method: str = "sl"
    temperature: float | None = None
    method_options: dict = field(default_factory=dict)  # only what the user set; defaults come from the method
    mix: str | None = None  # mixup, cutmix or ricap: mixed images drawn fresh each step
    mix_alpha: float | None = None  # None: the mix's usual Beta parameter
    seeds: tuple[int, ...] = ()  # a pack: one student per seed, trained in one pass (pipeline/run/packs.py)


def check_source_choice(options: StudentOptions, method: type[Distiller]) -> None:
    if options.labels and options.teachers:
        raise UserError("pass either --labels STORE or --teacher CKPT, not both")
    if options.expect_digest is not None and not options.labels:
        raise UserError("--expect-digest pins a label store's root digest: pass it with --labels STORE")
    if method.teacher_signals and not (options.labels or options.teachers):
        raise UserError(f"--method {method.name} needs teacher signals ({', '.join(method.teacher_signals)}): "
                        f"pass --labels STORE (from labelopt generate-labels) or --teacher CKPT")
    if not method.teacher_signals and (options.labels or options.teachers):
        raise UserError(f"--method {method.name} uses no teacher; drop --labels/--teacher")
    if options.labels and not method.store_servable:
        raise UserError(f"--method {method.name} cannot be served by a label store: {method.why_not_store()}; "
                        f"run its teacher online with --teacher CKPT")


def open_store_source(options: StudentOptions, method: type[Distiller], data: PreparedDataset, cache_dir=None
                      ) -> tuple[StoreSource, ViewSampler]:
    try:
        # A URL is fetched and checked here, under a lock: every torchrun rank runs this, one of them downloads.
        store = LabelStore.open(local_store(options.labels, cache_dir), options.expect_digest)
        store.check_dataset(data.identity("train"))
    except StoreError as exc:
        raise UserError(str(exc)) from None
    temperature = store.temperature  # validated on open: finite, > 0, a combined store's common one
    if SIGNAL_TARGETS in method.teacher_signals and options.temperature is not None \
            and temperature is not None and abs(options.temperature - temperature) > 1e-9:
        raise UserError(f"store {store.path} holds labels at temperature {temperature:g}, fixed when it was made; "
                        f"drop --temperature or generate labels with --temperature {options.temperature:g}")
    source = StoreSource(store, temperature)
    for signal in method.teacher_signals:
        why = source.missing(signal)
        if why:
            raise UserError(f"--method {method.name} needs {signal}: {why}")
    augment = None if options.augment == "auto" else get_view_policy(options.augment, data.input_size)
    if store.num_views == 1 and augment is None:
        augment = get_view_policy(default_augment(data), data.input_size)
    sampler = sampler_for_store(store, data, augment)
    check_store_mixes(store, sampler, method)
    source.load(method.teacher_signals)
    return source, sampler


def online_source(options: StudentOptions, method: type[Distiller], data: PreparedDataset, device
                  ) -> tuple[OnlineSource, ViewSampler]:
    teachers = load_teachers(options.teachers, data, device)
    temperature = options.temperature if options.temperature is not None else DEFAULT_TEMPERATURE
    labeler = (SoftLabeler if len(teachers) == 1 else EnsembleLabeler)(teachers, temperature)
    source = OnlineSource(labeler, temperature)
    for signal in method.teacher_signals:
        why = source.missing(signal)
        if why:
            raise UserError(f"--method {method.name} needs {signal}: {why}")
    augment = default_augment(data) if options.augment == "auto" else options.augment
    return source, AugmentViews(get_view_policy(augment, data.input_size))


def method_options(options: StudentOptions, method: type[Distiller]) -> dict:
    """The options the user set, by name (values as given: the method parses them by type and checks them)."""
    chosen = dict(options.method_options)
    known = method.option_types()
    if options.temperature is not None:
        if "temperature" in known:
            chosen["temperature"] = options.temperature
        elif not (SIGNAL_TARGETS in method.teacher_signals):
            raise UserError(f"--temperature does not apply to --method {method.name}")
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        named = ", ".join(f"--{k.replace('_', '-')}" if k in NAMED_FLAGS else f"--method-option {k}" for k in unknown)
        raise UserError(f"{named} does not apply to --method {method.name} (its options: "
                        f"{', '.join(known) or 'none'}; see labelopt methods)")
    return chosen


def distill_context(options: StudentOptions, data: PreparedDataset, method: type[Distiller],
                    source: TeacherSource) -> DistillContext:
    teacher_taps = [s[len(FEATURE_PREFIX):] for s in method.teacher_signals if s.startswith(FEATURE_PREFIX)]
    teacher_shapes = {}
    if teacher_taps and isinstance(source, OnlineSource):
        teacher_shapes = feature_shapes(source.teachers[0].arch, data.num_classes, teacher_taps, data.input_size)
    elif teacher_taps:
        teacher_shapes = {tap: (source.store.feature_dims[tap],) for tap in teacher_taps}
    student_shapes = feature_shapes(options.arch, data.num_classes, method.student_taps, data.input_size) \
        if method.student_taps else {}
    train_labels = torch.from_numpy(data.labels("train")) if method.needs_train_labels else None
    kept = training_indices(data, options.val_fraction) if method.needs_train_labels else None
    return DistillContext(data.num_classes, data.num_samples("train"), source.target_temperature if source else None,
                          student_shapes, teacher_shapes, train_labels,
                          None if kept is None else torch.from_numpy(kept.astype(np.int64)))


def student_outputs(model, inputs, arch: str, taps):
    """The student's logits and the features of its taps (forward hooks)."""
    if not taps:
        return model(inputs), {}
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    with FeatureTaps(inner, arch, taps) as tapped:
        logits = model(inputs)
        return logits, dict(tapped.features)


def make_objective(distiller: Distiller, source: TeacherSource | None, arch: str):
    signals = distiller.teacher_signals
    taps = distiller.student_taps

    def objective(model, inputs, batch: ViewedBatch, extra=None):
        method = extra if extra is not None else distiller  # extra: the distiller, DDP-wrapped when it trains
        rows = batch.labels.shape[0]
        inputs, batch = distiller.expand(inputs, batch)
        teacher = source.signals(batch, signals) if signals else {}
        if distiller.in_warmup and not distiller.student_learns_in_warmup:
            model.eval()  # fit sets train mode again at the next epoch
            with torch.no_grad():
                logits, student = student_outputs(model, inputs, arch, taps)
        else:
            logits, student = student_outputs(model, inputs, arch, taps)
        parts = method(logits, student, teacher, batch)
        logged = {k: v for k, v in parts.items() if k != "loss" and isinstance(v, torch.Tensor) and v.dim() == 0}
        return parts["loss"], logits[:rows], logged

    return objective


def check_pack(options: StudentOptions, method: type[Distiller], distiller: Distiller, sampler, dist_info) -> None:
    """What a pack of seeds takes in this version: label-based methods on unmixed views, in one process."""
    if len(set(options.seeds)) != len(options.seeds):
        raise UserError(f"--seeds {','.join(map(str, options.seeds))}: each member needs its own seed")
    if method.student_taps or any(p.requires_grad for p in distiller.parameters()):
        raise UserError(f"--seeds: --method {method.name} reads the student's features or trains modules of its "
                        f"own, which a pack does not hold; train it one run per --seed")
    if options.mix or (sampler is not None and sampler.describe().get("mix")) or distiller.views_per_sample > 1:
        raise UserError("--seeds: a pack trains on unmixed views, one per sample; train mixed images one run per "
                        "--seed")
    if dist_info.enabled:
        raise UserError("--seeds: a pack runs in one process (it fills a GPU by itself); drop torchrun")


def fit_pack(options: StudentOptions, data, method, chosen: dict, source, sampler, dist_info, device,
             on_epoch_end, log) -> Path:
    """One student per seed in one pass: member g is seeded (weights, view draws) as a run of its seed alone, and
    every member sees the batches in the order of --order-seed (default: the first seed)."""
    seeds = list(options.seeds)
    distillers = [method(distill_context(options, data, method, source), **chosen) for _ in seeds]
    check_pack(options, method, distillers[0], sampler, dist_info)
    members = []
    for seed in seeds:
        seed_everything(seed)  # as a run of this seed alone makes its weights
        members.append(create_model(options.arch, data.num_classes))
    views = PackViews([sampler or AugmentViews(get_view_policy(options.augment, data.input_size))] * len(seeds),
                      seeds)
    options = dataclasses.replace(options, seed=seeds[0],
                                  order_seed=seeds[0] if options.order_seed is None else options.order_seed)
    config = {"method_resolved": {"name": method.name, "options": dataclasses.asdict(distillers[0].options),
                                  "teacher_signals": list(method.teacher_signals)},
              "teacher_source": source.describe() if source else None}

    def start_epoch(epoch: int) -> None:
        views.start_epoch(epoch, dist_info.rank)
        for distiller in distillers:
            distiller.set_epoch(epoch)
    rows = pack_teacher_rows([source.rows] * len(seeds)) if isinstance(source, StoreSource) else None
    return fit(options, data, pack_models(members), pack_objective(distillers, [source] * len(seeds)), dist_info,
               device, command="train-student", sampler=views, teacher_rows=rows, capture=method.capture,
               config_extra=config, pack_seeds=seeds, on_epoch_start=start_epoch, on_epoch_end=on_epoch_end,
               log=log)


def train_student(options: StudentOptions, *, cache_dir=None, on_epoch_end=None, log=print) -> Path:
    """cache_dir: where a --labels URL is fetched to (default: store.remote.default_cache_dir())."""
    dist_info = init_distributed(options.device)
    device = device_for(dist_info, options.device)
    check_precision(device, options.bf16)
    data = open_training_data(options)
    try:
        method = get_distiller(options.method)
    except UnknownMethodError as exc:
        raise UserError(str(exc)) from None
    check_source_choice(options, method)
    check_mix_choice(options, method)
    chosen = method_options(options, method)
    source, sampler = None, None
    if options.labels:
        source, sampler = open_store_source(options, method, data, cache_dir)
    elif options.teachers:
        source, sampler = online_source(options, method, data, device)
    augment = sampler.describe()["policy"] if sampler else options.augment
    options = resolve_options(dataclasses.replace(options, augment=augment), data)
    seed_everything(options.seed)  # the student's initial weights come from the seed
    try:
        model = create_model(options.arch, data.num_classes)
    except UnknownModelError as exc:
        raise UserError(str(exc)) from None
    try:
        distiller = method(distill_context(options, data, method, source), **chosen)
    except ValueError as exc:  # a method's own check of its options or of the tap shapes
        raise UserError(f"--method {method.name}: {exc}") from None
    sampler = mixed_sampler(options, data, sampler)
    if sampler is not None:
        sampler = with_copies(sampler, distiller.views_per_sample)
    options = dataclasses.replace(options, label_smoothing=getattr(distiller.options, "label_smoothing", 0.0))
    if options.seeds:
        return fit_pack(options, data, method, chosen, source, sampler, dist_info, device, on_epoch_end, log)
    config = {"method_resolved": {"name": method.name, "options": dataclasses.asdict(distiller.options),
                                  "teacher_signals": list(method.teacher_signals)},
              "teacher_source": source.describe() if source else None}
    if source is not None and is_url(options.labels):  # the URL, not this machine's cache: a resume may use another
        config["teacher_source"]["path"] = options.labels
    return fit(options, data, model, make_objective(distiller, source, options.arch), dist_info, device,
               command="train-student", sampler=sampler,
               teacher_rows=source.rows if isinstance(source, StoreSource) else None, capture=method.capture,
               extra_modules=distiller, phases=distiller.phases(),
               config_extra=config,
               on_epoch_start=distiller.set_epoch, on_epoch_end=on_epoch_end, log=log)
