"""train-student's packs, trained in one pass as one network (pipeline/run/packs.py): `--seeds S1,S2,...`
(one method and teacher, a student per seed, in OUT/seed-S) or `--member SPEC` repeated (each member of its own
method, label store, seed and method options, in OUT/NAME or its own out=FOLDER; pipeline/run/members.py).

Each member is resolved as a standalone run of its own options would be (student.py; a store is opened once per
pack, online teachers loaded once), seeded (weights, view draws) as that run, and sees the pack's data order
(--order-seed, default the first member's seed): a standalone run with the member's options and that order seed
trains bit for bit as the member (stacked; grouped, with the native convolution). Its config.json is that run's,
plus where its pack is and its layout; the pack's own config.json and last.pt record the members, and a resume
with others is refused.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ...models.packing import pack_models
from ...stages.distillers import Distiller, UnknownMethodError, get_distiller
from ...stages.distillers.options import parse_value
from ...stages.teacher_sources import StoreSource
from ..errors import UserError
from ..locks import output_lock
from ..run.members import SPEC_TEXT, MemberSpec, check_members
from ..run.packs import PackMember, PackViews, pack_objective, pack_teacher_rows, recorded_layout, signal_slots
from ..run.runs import read_config
from ..run.runtime import seed_everything
from ..run.training import config_record, fit
from ..run.train_setup import COMPILE_SCOPES
from ..views.draws import AugmentViews
from ..views.policies import get_view_policy
from .student import (Student, StudentOptions, compile_scope, finish_student, make_distiller, new_student_model,
                      resolve_student, student_record)

# What --member gives each member in its SPEC, so the command may not give it for all (flag, why).
PER_MEMBER = (("seeds", "--seeds", "each SPEC gives its seed"), ("labels", "--labels", "each SPEC gives its labels="),
              ("teachers", "--teacher", "a pack of --member trains from label stores or without a teacher; an "
                                        "online teacher packs its seeds with --seeds"),
              ("temperature", "--temperature", "each SPEC gives its temperature="),
              ("method_options", "--ce-weight, --kd-weight, --label-smoothing and --method-option",
               "each SPEC gives its method's options as OPTION=VALUE"),
              ("expect_digest", "--expect-digest", "it pins one store"))


@dataclass
class Built:
    """A member ready to train: what it is, its resolved run, its initial weights and its method."""
    spec: MemberSpec
    student: Student
    model: torch.nn.Module
    distiller: Distiller


def pack_specs(options: StudentOptions) -> list[MemberSpec]:
    """--member's members, or --seeds' as members named seed-S (their folders OUT/seed-S)."""
    if options.members:
        for name, flag, why in PER_MEMBER:
            if getattr(options, name):
                raise UserError(f"--member gives each member its method, store, seed and options: drop {flag} "
                                f"({why}; a SPEC is {SPEC_TEXT})")
        return list(options.members)
    if len(set(options.seeds)) != len(options.seeds):
        raise UserError(f"--seeds {','.join(map(str, options.seeds))}: each member needs its own seed")
    return [MemberSpec(f"seed-{seed}", options.method, seed, options.labels, options.temperature,
                       dict(options.method_options)) for seed in options.seeds]


def member_options(options: StudentOptions, spec: MemberSpec, pack: Path, order_seed: int) -> StudentOptions:
    """The options of a standalone run of the member: its own method, store, seed and folder, the pack's order."""
    method_options = member_method_options(spec) if options.members else dict(options.method_options)
    return dataclasses.replace(options, method=spec.method, labels=spec.labels, temperature=spec.temperature,
                               method_options=method_options, seed=spec.seed, order_seed=order_seed,
                               out=str(spec.folder(pack)), seeds=(), members=(), pack_layout=None)


def member_method_options(spec: MemberSpec) -> dict:
    """A SPEC's OPTION=VALUE items, each parsed by the type of the method's option (as --method-option is)."""
    try:
        known = get_distiller(spec.method).option_types()
    except UnknownMethodError as exc:
        raise UserError(f"--member {spec.name}: {exc}") from None
    unknown = [name for name in spec.method_options if name not in known]
    if unknown:
        raise UserError(f"--member {spec.name}: {unknown[0]} is not an option of method {spec.method} (its "
                        f"options: {', '.join(known) or 'none'}; a SPEC is {SPEC_TEXT})")
    try:
        return {name: parse_value(name, known[name], value) for name, value in spec.method_options.items()}
    except ValueError as exc:
        raise UserError(f"--member {spec.name}: {exc}") from None


def check_member(where: str, student: Student, distiller: Distiller) -> None:
    """What a pack holds in this version: label-based methods on one view per sample (mixed or not), without a
    warm-up."""
    method = student.method
    if method.student_taps or any(p.requires_grad for p in distiller.parameters()):
        raise UserError(f"{where}: --method {method.name} reads the student's features or trains modules of its "
                        f"own, which a pack does not hold; train it one run per --seed")
    if distiller.views_per_sample > 1:
        raise UserError(f"{where}: --method {method.name} sees {distiller.views_per_sample} views of every image "
                        f"per step, and a pack's members see one each; train it one run per --seed")
    if distiller.warmup_epochs:
        raise UserError(f"{where}: --method {method.name} warms up for {distiller.warmup_epochs} epochs first, "
                        f"which a pack does not run; train it one run per --seed")


def build_members(options: StudentOptions, specs: list[MemberSpec], data, device, cache_dir,
                  order_seed: int) -> list[Built]:
    """Each member resolved as its standalone run, and seeded as that run makes its weights."""
    opened: dict = {}  # each store opened, each online teacher loaded, once for the pack
    built = []
    for spec in specs:
        where = f"--member {spec.name}" if options.members else "--seeds"
        own = member_options(options, spec, Path(options.out), order_seed)
        try:
            student = resolve_student(own, data, device, cache_dir, opened)
            seed_everything(spec.seed)  # as a run of this seed alone makes its weights
            model = new_student_model(student, data)
            distiller = make_distiller(student, data)
        except UserError as exc:
            if not options.members:
                raise
            raise UserError(f"{where}: {exc}") from None
        check_member(where, student, distiller)
        built.append(Built(spec, finish_student(student, distiller, data), model, distiller))
    return built


def pack_layout(options: StudentOptions, device: torch.device) -> str:
    """--pack-layout; on --resume without it, the layout the pack started in (its last.pt holds that layout's
    tensors); else the device's: grouped on a GPU (one wide network fills it), stacked on a CPU."""
    if options.pack_layout:
        return options.pack_layout
    if options.resume:
        try:
            started = recorded_layout(read_config(Path(options.out)))
        except UserError:  # nothing to resume: a new pack
            started = None
        if started:
            return started
    return "grouped" if device.type == "cuda" else "stacked"


def pack_options(options: StudentOptions, first: StudentOptions, order_seed: int, layout: str) -> StudentOptions:
    """The pack's own run options: the shared ones as its first member resolved them; a pack of --member records
    no method, store or method option of its own, and --augment as given (each member's config.json holds what
    its own store or method made of them)."""
    shared = dataclasses.replace(first, out=options.out, seeds=options.seeds, members=options.members,
                                 order_seed=order_seed, pack_layout=layout)
    if not options.members:
        return shared
    return dataclasses.replace(shared, method=None, labels=None, temperature=None, method_options={},
                               label_smoothing=0.0, augment=options.augment)


def member_runs(built: list[Built], pack: Path, layout: str, data, dist_info) -> list[PackMember]:
    """Each member's run folder and the config.json a standalone run of it would write, with its pack's."""
    names = [b.spec.name for b in built]
    members = []
    for b in built:
        student = b.student
        views = student.sampler or AugmentViews(get_view_policy(student.options.augment, data.input_size))
        extra = {**student_record(student, b.distiller), "views": views.describe()}
        config = config_record(student.options, data, dist_info, "train-student", extra, b.distiller.phases())
        config["pack"] = {"folder": str(pack), "name": b.spec.name, "members": names, "layout": layout}
        members.append(PackMember(b.spec.name, b.spec.seed, Path(student.options.out), config))
    return members


@contextlib.contextmanager
def member_folders(options: StudentOptions, specs: list[MemberSpec], pack: Path):
    """Hold the lock of each member folder outside the pack's (the pack's own lock covers those inside it); a new
    pack needs them empty or absent, unless --overwrite."""
    inside = Path(pack).expanduser().resolve()
    with contextlib.ExitStack() as held:
        for spec in specs:
            folder = spec.folder(pack)
            if folder.expanduser().resolve().is_relative_to(inside):
                continue
            held.enter_context(output_lock(folder, "member run folder"))
            if folder.exists() and not folder.is_dir():
                raise UserError(f"--member {spec.name}: out={folder} is a file, not a run folder")
            if not (options.resume or options.overwrite) and folder.is_dir() and any(folder.iterdir()):
                raise UserError(f"--member {spec.name}: run folder {folder} already exists; pass --overwrite to "
                                f"replace it or --resume to continue its pack")
        yield


def train_pack(options: StudentOptions, data, dist_info, device, *, cache_dir=None, on_epoch_end=None,
               log=print) -> Path:
    """The members trained in one pass; returns the pack's folder (each member's run folder is written from it)."""
    specs = pack_specs(options)
    if dist_info.enabled:
        raise UserError("a pack runs in one process (it fills a GPU by itself); drop torchrun")
    out = Path(options.out)
    check_members(specs, out)
    order_seed = specs[0].seed if options.order_seed is None else options.order_seed
    with member_folders(options, specs, out):
        built = build_members(options, specs, data, device, cache_dir, order_seed)
        students = [b.student for b in built]
        views = PackViews([s.sampler or AugmentViews(get_view_policy(s.options.augment, data.input_size))
                           for s in students], [b.spec.seed for b in built])
        stored = [isinstance(s.source, StoreSource) for s in students]
        slots = signal_slots([s.source.names if own else () for s, own in zip(students, stored)])
        rows = pack_teacher_rows([s.source if own else None for s, own in zip(students, stored)]) \
            if any(stored) else None
        objective = pack_objective([b.distiller for b in built], [s.source for s in students], slots, stored,
                                   views.member_parts)
        config = {"pack": {"members": [b.spec.record() for b in built]}}
        if not options.members:  # a pack of seeds records its one method and teacher as a run does
            config.update(student_record(students[0], built[0].distiller))

        def start_epoch(epoch: int) -> None:
            views.start_epoch(epoch, dist_info.rank)
            for b in built:
                b.distiller.set_epoch(epoch)
        capture = max((compile_scope(s) for s in students), key=COMPILE_SCOPES.index)  # what every member allows
        layout = pack_layout(options, device)
        shared = pack_options(options, students[0].options, order_seed, layout)
        return fit(shared, data, pack_models([b.model for b in built], layout), objective, dist_info, device,
                   command="train-student", sampler=views, teacher_rows=rows, capture=capture, config_extra=config,
                   pack=member_runs(built, out, layout, data, dist_info), on_epoch_start=start_epoch,
                   on_epoch_end=on_epoch_end, log=log)
