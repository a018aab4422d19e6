"""`labelopt train-student`: stage two, a student trained from a label store or an online teacher.

The store is checked against the data before the first step (fingerprint, N,
classes, views, signals); the method's distiller gets its teacher signals from a
source that is either the store or the teachers run online, through one interface.
A pack (--seeds, --member) is student_pack.py: each member resolved here as a run of its own options.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ...models import FeatureTaps, UnknownModelError, create_model, feature_shapes
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
from ..run.members import MemberSpec
from ..run.options import TrainOptions, open_training_data, resolve_options
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
    members: tuple[MemberSpec, ...] = ()  # or a pack of members, each of its own method, store and seed (--member)
    pack_layout: str | None = None  # a pack's models/packing.py layout (None: grouped on a GPU, stacked on a CPU)


@dataclass
class Student:
    """A run's options resolved before its model exists: its method, the options it sets, its teacher source and
    the sampler of its views (None: fresh views of options.augment)."""
    options: StudentOptions
    method: type[Distiller]
    chosen: dict
    source: TeacherSource | None
    sampler: ViewSampler | None


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


def open_store_source(options: StudentOptions, method: type[Distiller], data: PreparedDataset, cache_dir=None,
                      opened: dict | None = None) -> tuple[StoreSource, ViewSampler]:
    """The store's source and views for the method; `opened`: the stores a pack has opened (each opened once)."""
    opened = {} if opened is None else opened
    key = ("store", options.labels)
    if key not in opened:
        try:
            # A URL is fetched and checked here, under a lock: every torchrun rank runs this, one of them downloads.
            store = LabelStore.open(local_store(options.labels, cache_dir), options.expect_digest)
            store.check_dataset(data.identity("train"))
        except StoreError as exc:
            raise UserError(str(exc)) from None
        opened[key] = (store, None)
    store, sampler = opened[key]
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
    if sampler is None:  # the store's views: one sampler for every member that reads the store
        sampler = store_sampler(options, store, data)
        opened[key] = (store, sampler)
    check_store_mixes(store, sampler, method)
    source.load(method.teacher_signals)
    return source, sampler


def store_sampler(options: StudentOptions, store: LabelStore, data: PreparedDataset) -> ViewSampler:
    augment = None if options.augment == "auto" else get_view_policy(options.augment, data.input_size)
    if store.num_views == 1 and augment is None:
        augment = get_view_policy(default_augment(data), data.input_size)
    return sampler_for_store(store, data, augment)


def online_source(options: StudentOptions, method: type[Distiller], data: PreparedDataset, device,
                  opened: dict | None = None) -> tuple[OnlineSource, ViewSampler]:
    """The teachers run online; `opened`: the teachers a pack has loaded (loaded once for all its members)."""
    opened = {} if opened is None else opened
    key = ("online", tuple(options.teachers), options.temperature)
    if key not in opened:
        teachers = load_teachers(options.teachers, data, device)
        temperature = options.temperature if options.temperature is not None else DEFAULT_TEMPERATURE
        labeler = (SoftLabeler if len(teachers) == 1 else EnsembleLabeler)(teachers, temperature)
        augment = default_augment(data) if options.augment == "auto" else options.augment
        opened[key] = (OnlineSource(labeler, temperature), AugmentViews(get_view_policy(augment, data.input_size)))
    source, sampler = opened[key]
    for signal in method.teacher_signals:
        why = source.missing(signal)
        if why:
            raise UserError(f"--method {method.name} needs {signal}: {why}")
    return source, sampler


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
        # The class's flag first: a compiled step then never reads the epoch (a guard on it would recompile).
        if not distiller.student_learns_in_warmup and distiller.in_warmup:
            model.eval()  # fit sets train mode again at the next epoch
            with torch.no_grad():
                logits, student = student_outputs(model, inputs, arch, taps)
        else:
            logits, student = student_outputs(model, inputs, arch, taps)
        parts = method(logits, student, teacher, batch)
        logged = {k: v for k, v in parts.items() if k != "loss" and isinstance(v, torch.Tensor) and v.dim() == 0}
        return parts["loss"], logits[:rows], logged

    return objective


def resolve_student(options: StudentOptions, data: PreparedDataset, device, cache_dir=None,
                    opened: dict | None = None) -> Student:
    """Everything a run decides before its model exists, each choice checked (one line for the first refused)."""
    try:
        method = get_distiller(options.method)
    except UnknownMethodError as exc:
        raise UserError(str(exc)) from None
    check_source_choice(options, method)
    check_mix_choice(options, method)
    chosen = method_options(options, method)
    source, sampler = None, None
    if options.labels:
        source, sampler = open_store_source(options, method, data, cache_dir, opened)
    elif options.teachers:
        source, sampler = online_source(options, method, data, device, opened)
    augment = sampler.describe()["policy"] if sampler else options.augment
    options = resolve_options(dataclasses.replace(options, augment=augment), data)
    return Student(options, method, chosen, source, sampler)


def new_student_model(student: Student, data: PreparedDataset) -> torch.nn.Module:
    """The student's initial weights, from the global seed as the caller set it."""
    try:
        return create_model(student.options.arch, data.num_classes)
    except UnknownModelError as exc:
        raise UserError(str(exc)) from None


def make_distiller(student: Student, data: PreparedDataset) -> Distiller:
    try:
        return student.method(distill_context(student.options, data, student.method, student.source),
                              **student.chosen)
    except ValueError as exc:  # a method's own check of its options or of the tap shapes
        raise UserError(f"--method {student.method.name}: {exc}") from None


def finish_student(student: Student, distiller: Distiller, data: PreparedDataset) -> Student:
    """The sampler as the method draws (mixed, copied) and the label smoothing it resolved."""
    sampler = mixed_sampler(student.options, data, student.sampler)
    if sampler is not None:
        sampler = with_copies(sampler, distiller.views_per_sample)
    options = dataclasses.replace(student.options,
                                  label_smoothing=getattr(distiller.options, "label_smoothing", 0.0))
    return dataclasses.replace(student, options=options, sampler=sampler)


def student_record(student: Student, distiller: Distiller) -> dict:
    """config.json's record of the method and the teacher source."""
    source = student.source
    config = {"method_resolved": {"name": student.method.name, "options": dataclasses.asdict(distiller.options),
                                  "teacher_signals": list(student.method.teacher_signals)},
              "teacher_source": source.describe() if source else None}
    if source is not None and is_url(student.options.labels):  # the URL, not this machine's cache: a resume may
        config["teacher_source"]["path"] = student.options.labels  # use another
    return config


def compile_scope(student: Student) -> str:
    """What --compile may take in (train_setup.COMPILE_SCOPES): nothing for a method that hooks the student's
    layers, the student alone when a teacher runs online in the step, else the whole step with the method's loss."""
    if student.method.capture == "eager":
        return "eager"
    return "student" if isinstance(student.source, OnlineSource) else "step"


def train_student(options: StudentOptions, *, cache_dir=None, on_epoch_end=None, log=print) -> Path:
    """cache_dir: where a --labels URL is fetched to (default: store.remote.default_cache_dir())."""
    if options.pack_layout and not (options.seeds or options.members):
        raise UserError(f"--pack-layout {options.pack_layout} lays out a pack's members: give --seeds or --member, "
                        f"or drop it")
    dist_info = init_distributed(options.device)
    device = device_for(dist_info, options.device)
    check_precision(device, options.bf16)
    data = open_training_data(options)
    if options.seeds or options.members:
        from .student_pack import train_pack  # here: student_pack builds on this module

        return train_pack(options, data, dist_info, device, cache_dir=cache_dir, on_epoch_end=on_epoch_end, log=log)
    student = resolve_student(options, data, device, cache_dir)
    seed_everything(student.options.seed)  # the student's initial weights come from the seed
    model = new_student_model(student, data)
    distiller = make_distiller(student, data)
    student = finish_student(student, distiller, data)
    return fit(student.options, data, model, make_objective(distiller, student.source, student.options.arch),
               dist_info, device, command="train-student", sampler=student.sampler,
               teacher_rows=student.source.rows if isinstance(student.source, StoreSource) else None,
               capture=compile_scope(student), extra_modules=distiller, phases=distiller.phases(),
               config_extra=student_record(student, distiller), on_epoch_start=distiller.set_epoch,
               on_epoch_end=on_epoch_end, log=log)
