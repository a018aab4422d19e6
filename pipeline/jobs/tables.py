"""`labelopt table`: a whole results table from one table file (table_file.py) and one command.

The plan: the data (prepared on the fly, or a prepared folder), then the teachers (`labelopt train`), then the
label stores (`labelopt generate-labels`), then the rows (`labelopt train-student`), each step skipped when its
output is complete and continued when it is partly done (table_steps.py). Rows a pack can hold (table_checks.py's
pack_refusal, as pipeline/jobs/student_pack.py checks them: no student features, no modules of their own, no
warm-up) train their seeds in packs of at most max_pack students, rows of the same student and options together
(table_packs.py); any other row trains one run per seed. Every row's seed S lands in OUT/runs/<row>/seed-S, an
ordinary run folder; table_report.py evaluates them and writes the table.

OUT holds data/ (a prepared dataset), teachers/<name>/, labels/<name>.h5, runs/<row>/, packs/<pack>/ (the packs
of several rows), logs/, eval/, table.md and table.json.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .table_file import RowSpec, StoreSpec, TableSpec, load_table
from .table_keys import STORE_KEYS, STUDENT_KEYS, TEACHER_KEYS, method_option_args, option_args
from .table_steps import DONE, NEW, RESUME, Step, log_name, pack_state, run_flag, run_state


@dataclass
class TableRequest:
    table: str  # a table file or a shipped table's name
    out: Path
    dry_run: bool = False
    smoke: bool = False  # every run 1 epoch (warm-ups 1), the first seed, the file's [smoke] merged over it
    rows: tuple[str, ...] = ()  # only these rows (and what they need)
    seeds: tuple[int, ...] = ()  # instead of the file's seeds
    data: str | None = None  # a prepared folder instead of the file's dataset
    device: str = "auto"
    jobs: int = 1  # steps run at once
    max_pack: int | None = None  # instead of the file's max_pack


@dataclass
class RowRuns:
    """A row's run folders, one per seed, and how they are trained."""
    row: RowSpec
    packed: bool
    why_not_packed: str
    folders: dict[int, Path]
    teacher: str  # who teaches it, for the report


@dataclass
class Plan:
    table: TableSpec
    out: Path
    data: Path
    steps: list[Step] = field(default_factory=list)
    teachers: dict[str, Path] = field(default_factory=dict)  # teacher name -> run folder
    rows: list[RowRuns] = field(default_factory=list)
    packs: list = field(default_factory=list)  # table_packs.PackPlan: which rows' seeds train together
    budgets: dict = field(default_factory=dict)  # student and options -> table_memory.PackBudget (None: no data yet)

    def describe(self) -> dict:
        return {"table": str(self.table.path), "title": self.table.title, "out": str(self.out),
                "data": str(self.data), "smoke": self.table.smoke, "seeds": list(self.table.seeds),
                "max_pack": self.table.max_pack,
                "rows": [{"name": r.row.name, "packed": r.packed, "why_not_packed": r.why_not_packed or None,
                          "folders": {str(s): str(f) for s, f in r.folders.items()}} for r in self.rows],
                "packs": [p.describe() for p in self.packs],
                "pack_budgets": [{"student": key, **(b.describe() if b else {"limit": self.table.max_pack,
                                                                              "memory": "checked once the data is "
                                                                                        "prepared"})}
                                 for key, b in self.budgets.items()],
                "steps": [s.describe() for s in self.steps]}


def narrowed(table: TableSpec, request: TableRequest) -> TableSpec:
    """The table as this command runs it: --rows, --seeds, --data, --smoke's 1 epoch and 1 seed, and only the
    teachers and stores its rows need."""
    rows = table.rows
    if request.rows:
        names = [r.name for r in rows]
        unknown = [n for n in request.rows if n not in names]
        if unknown:
            raise UserError(f"--rows: {table.path} has no row '{unknown[0]}' (rows: {', '.join(names)})")
        rows = [r for r in rows if r.name in request.rows]
    seeds = request.seeds or (table.seeds[:1] if table.smoke else table.seeds)
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {','.join(map(str, seeds))}: each seed once")
    if table.smoke:
        rows = [dataclasses.replace(r, options=smoke_options(r.options)) for r in rows]
        table = dataclasses.replace(table, teachers={n: dataclasses.replace(t, options=smoke_options(t.options))
                                                     for n, t in table.teachers.items()})
    stores = {n: s for n, s in table.stores.items() if any(r.labels == n for r in rows)}
    wanted = {t for s in stores.values() for t in s.teachers} | {t for r in rows for t in r.teachers}
    teachers = {n: t for n, t in table.teachers.items() if n in wanted}
    names = {r.name for r in rows}
    checks = [c for c in table.checks if c.row in names and c.than in names]
    data = request.data or table.data
    return dataclasses.replace(table, rows=rows, seeds=tuple(seeds), stores=stores, teachers=teachers, checks=checks,
                               data=data, prepare=None if request.data else table.prepare,
                               max_pack=request.max_pack or table.max_pack)


def smoke_options(options: dict) -> dict:
    """One epoch; the file's milestones belong to its epochs (a recipe's are scaled by --epochs)."""
    return {**{k: v for k, v in options.items() if k != "milestones"}, "epochs": 1}


def make_plan(table: TableSpec, request: TableRequest) -> Plan:
    """Every step with its state, every row's run folders; each row's method checked against its source."""
    out = Path(request.out)
    if table.prepare:
        data = out / "data" / table.prepare
    else:
        data = Path(table.data).expanduser()
        if not (data / "meta.json").is_file() and not request.dry_run:  # a dry run may precede the prepare
            raise UserError(f"{table.path}: data {data} is not a prepared dataset (no meta.json); make it with "
                            f"labelopt prepare, or pass --data")
    plan = Plan(table, out, data)
    if table.prepare:
        plan.steps.append(prepare_step(table, out, data))
    for name, teacher in table.teachers.items():
        folder = out / "teachers" / name
        plan.teachers[name] = folder
        expect = {"command": "train", "arch": teacher.arch, "seed": teacher.options.get("seed", 0),
                  **pick(teacher.options, "epochs", "val_fraction")}
        state, why = run_state(folder, expect)
        args = ["train", "--data", str(data), *option_args(teacher.options, TEACHER_KEYS), "--device",
                request.device, "--out", str(folder), *run_flag(state)]
        plan.steps.append(Step("teachers", f"teacher {name}", args, state, out / "logs" / f"teacher-{name}.log", why))
    for store in table.stores.values():
        plan.steps.append(store_step(store, plan, request))
    plan_rows(plan, request)
    return plan


def pick(options: dict, *keys: str) -> dict:
    return {k: options[k] for k in keys if k in options}


def prepare_step(table: TableSpec, out: Path, data: Path) -> Step:
    done = (data / "meta.json").is_file()
    args = ["prepare", "--dataset", table.prepare, *(["--root", table.root] if table.root else []), "--out",
            str(out / "data"), *([] if done else ["--overwrite"])]
    return Step("data", f"data {table.prepare}", args, DONE if done else NEW, out / "logs" / "prepare.log",
                "prepared" if done else "")


def checkpoint(name: str, plan: Plan) -> str:
    """A teacher name's checkpoint (its run's last.pt: a test-selected best.pt is never a teacher), or a path."""
    return str(plan.teachers[name] / "last.pt") if name in plan.teachers else name


def store_path(name: str, plan: Plan) -> Path:
    return plan.out / "labels" / f"{name}.h5" if name in plan.table.stores else Path(name).expanduser()


def store_step(store: StoreSpec, plan: Plan, request: TableRequest) -> Step:
    from .table_checks import store_state

    path = store_path(store.name, plan)
    state, why = store_state(path, store)
    teachers = [a for t in store.teachers for a in ("--teacher", checkpoint(t, plan))]
    args = ["generate-labels", "--data", str(plan.data), *teachers, *option_args(store.options, STORE_KEYS),
            "--device", request.device, "--out", str(path)]
    return Step("stores", f"store {store.name}", args, state, plan.out / "logs" / f"store-{store.name}.log", why)


def plan_rows(plan: Plan, request: TableRequest) -> None:
    """Every row checked, then its steps in the table's order: the packs that hold its seeds, or one run per seed."""
    from .table_checks import check_row, pack_refusal, smoke_warmups
    from .table_packs import plan_packs

    for row in plan.table.rows:
        check_row(row, plan.table)
        if plan.table.smoke:
            row = dataclasses.replace(row, options=smoke_warmups(row))
        refusal = pack_refusal(row, plan.table)
        if not refusal and plan.table.max_pack == 1:
            refusal = "max_pack 1: every run its own process"
        folders = {seed: plan.out / "runs" / row.name / f"seed-{seed}" for seed in plan.table.seeds}
        plan.rows.append(RowRuns(row, not refusal, refusal, folders, teacher_text(row, plan.table)))
    plan.packs = plan_packs([r for r in plan.rows if r.packed], plan.out, plan.table.seeds,
                            lambda row: pack_limit(row, plan, request))
    planned = set()
    for runs in plan.rows:
        if not runs.packed:
            plan.steps += seed_steps(runs, plan, request)
        for pack in plan.packs:
            if id(pack) not in planned and any(r is runs for r, _ in pack.members):
                planned.add(id(pack))
                plan.steps.append(pack_step(pack, plan, request))


def pack_limit(row: RowSpec, plan: Plan, request: TableRequest) -> tuple[int, str]:
    """The most members of a row's packs and why: max_pack, or what the device's memory holds (once the data is
    prepared: its classes and image side size the student)."""
    from ..data.datasets import open_dataset
    from ..run.options import TrainOptions
    from .table_memory import pack_budget

    side_option = row.options.get("resolution")
    batch = row.options.get("batch_size", TrainOptions.batch_size)
    key = f"{row.student}, batch {batch}" + (f", resolution {side_option}" if side_option else "")
    if key not in plan.budgets:
        budget = None
        try:  # no data yet (a dry run before the prepare) or none readable: the steps that read it will say why
            data = open_dataset(plan.data).at_resolution(side_option)
        except UserError:
            data = None
        if data is not None:
            budget = pack_budget(row.student, data.num_classes, data.input_size, batch, plan.table.max_pack,
                                 request.device, request.jobs)
        plan.budgets[key] = budget
    budget = plan.budgets[key]
    return (plan.table.max_pack, f"max_pack {plan.table.max_pack}") if budget is None else (budget.limit, budget.why())


def row_args(row: RowSpec, plan: Plan, request: TableRequest) -> list[str]:
    """A row's train-student arguments, less its seed and folder."""
    return ["train-student", "--data", str(plan.data), "--student", row.student, "--method", row.method,
            *row_source(row, plan), *option_args(row.options, STUDENT_KEYS),
            *method_option_args(row.options.get("method_options", {})), "--device", request.device]


def seed_steps(runs: RowRuns, plan: Plan, request: TableRequest) -> list[Step]:
    """A row's runs one per seed, each its own process."""
    from .table_packs import expected

    steps = []
    for seed, folder in runs.folders.items():
        state, why = run_state(folder, {**expected(runs.row), "method": runs.row.method, "seed": seed})
        own = ["--seed", str(seed), "--out", str(folder), *run_flag(state)]
        steps.append(Step("rows", f"row {runs.row.name} seed {seed}", row_args(runs.row, plan, request) + own, state,
                          plan.out / "logs" / f"row-{log_name(runs.row.name)}-seed-{seed}.log", why))
    return steps


def pack_step(pack, plan: Plan, request: TableRequest) -> Step:
    """A pack's step: one row's seeds as train-student --seeds in its runs/<row>, or a mixed pack (table_packs)."""
    from .table_packs import expected, mixed_step

    logs = plan.out / "logs"
    if not pack.seeds_form:
        def labels(row: RowSpec) -> str | None:
            return None if row.labels is None else str(store_path(row.labels, plan))
        return mixed_step(pack, plan.data, request.device, labels, logs)
    runs = pack.members[0][0]
    state, why = pack_state(pack.folder, runs.folders, {**expected(runs.row), "method": runs.row.method})
    args = row_args(runs.row, plan, request) + ["--seeds", ",".join(str(s) for _, s in pack.members), "--out",
                                                 str(pack.folder), *run_flag(state)]
    seeds = len(pack.members)
    return Step("rows", f"row {runs.row.name} (pack of {seeds} seed{'s' * (seeds > 1)})", args, state,
                logs / f"row-{log_name(runs.row.name)}.log", why)


def row_source(row: RowSpec, plan: Plan) -> list[str]:
    if row.labels is not None:
        return ["--labels", str(store_path(row.labels, plan))]
    return [a for t in row.teachers for a in ("--teacher", checkpoint(t, plan))]


def teacher_text(row: RowSpec, table: TableSpec) -> str:
    """Who teaches a row: "-", "r56 (online)", "store ens (r32+r44+r56)"."""
    def short(name: str) -> str:
        return name if name in table.teachers or name in table.stores else Path(name).parent.name or name
    if row.labels is not None:
        store = table.stores.get(row.labels)
        members = f" ({'+'.join(short(t) for t in store.teachers)})" if store and store.teachers else ""
        return f"store {short(row.labels)}{members}"
    return f"{'+'.join(short(t) for t in row.teachers)} (online)" if row.teachers else "-"


def run_table(request: TableRequest, log=print) -> dict:
    """Plan, then (unless dry_run) run every unfinished step, evaluate every run and write the table. Returns the
    plan's description (dry_run) or the report."""
    from ..locks import output_lock
    from .table_report import write_report
    from .table_steps import Lanes

    table = narrowed(load_table(request.table, smoke=request.smoke), request)
    plan = make_plan(table, request)
    if request.dry_run:
        return plan.describe()
    with output_lock(plan.out, "table folder"):
        for step in plan.steps:
            if step.state == DONE:
                log(f"table: {step.name}: complete, skipped ({step.why})")
        lanes = Lanes(request.jobs, log)
        lanes.run([s for s in plan.steps if s.phase == "data"])
        if any(budget is None for budget in plan.budgets.values()):
            plan = make_plan(table, request)  # the data is prepared now: its packs sized to the device's memory
        for key, budget in ((k, b) for k, b in plan.budgets.items() if b is not None):
            log(f"table: packs of {key}: at most {budget.limit} students ({budget.why()})")
        for phase in ("teachers", "stores", "rows"):
            lanes.run([s for s in plan.steps if s.phase == phase])
        return write_report(plan, request.device, log)


__all__ = ["TableRequest", "Plan", "RowRuns", "run_table", "make_plan", "narrowed", "DONE", "NEW", "RESUME"]
