"""Which of a table's runs train together as one pack (`labelopt table`; the packs: pipeline/run/packs.py).

Rows a pack can hold (table_checks.pack_refusal) that train the same student with the same options (everything
but the method, the label store, the temperature and the method's options; the data is the table's) share packs:
their members, row by row and seed by seed, cut into packs of at most max_pack students, or fewer where the device's
memory holds fewer (table_memory.py). A pack that holds one
row's seeds exactly trains as `train-student --seeds` in OUT/runs/<row> (the pack's own files beside its
members); a mixed one as `train-student --member ...` in OUT/packs/<first row>-seed-<first seed>, each member's
run folder still OUT/runs/<row>/seed-S, so the report reads every run where it always does. A row of an online
teacher packs its own seeds only (--member takes label stores). Every pack's members share the table's first seed
as their data order; max_pack 1 trains each run on its own, with its own data order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..run.members import MemberSpec, member_text
from .table_file import RowSpec
from .table_keys import STUDENT_KEYS, option_args
from .table_steps import Step, log_name, members_state, run_flag

MEMBER_KEYS = ("temperature", "ce_weight", "kd_weight", "label_smoothing", "method_options")  # in each SPEC


@dataclass
class PackPlan:
    name: str
    folder: Path  # the pack's own folder (config.json, metrics.jsonl, last.pt of the whole pack)
    members: list = field(default_factory=list)  # (RowRuns, seed), in training order
    seeds_form: bool = False  # one row's seeds exactly: train-student --seeds in OUT/runs/<row>
    order_seed: int = 0  # the data order of every member: the table's first seed

    def rows(self) -> list[str]:
        return list(dict.fromkeys(runs.row.name for runs, _ in self.members))

    def describe(self) -> dict:
        return {"name": self.name, "folder": str(self.folder),
                "members": [{"row": runs.row.name, "seed": seed} for runs, seed in self.members]}


def shared_options(row: RowSpec) -> dict:
    return {k: v for k, v in row.options.items() if k not in MEMBER_KEYS}


def plan_packs(packed: list, out: Path, seeds: tuple[int, ...], limit_of) -> list[PackPlan]:
    """The packs of the rows a pack can hold (their RowRuns); a row none can hold is marked so. `limit_of(row)`:
    (the most members of its packs, why that many)."""
    packs, groups = [], {}
    for runs in packed:
        limit, why = limit_of(runs.row)
        if runs.row.teachers:  # an online teacher: its own seeds, as train-student --seeds takes them
            if len(seeds) > limit:
                runs.packed = False
                runs.why_not_packed = (f"an online teacher packs its own row's seeds only, and its {len(seeds)} "
                                       f"seeds are more than a pack holds ({why})")
            else:
                packs.append(row_pack(runs, out, seeds))
            continue
        key = json.dumps([runs.row.student, shared_options(runs.row)], sort_keys=True)
        groups.setdefault(key, []).append(runs)
    for group in groups.values():
        limit, _ = limit_of(group[0].row)  # the rows of a group share the student and its options
        members = [(runs, seed) for runs in group for seed in seeds]
        for start in range(0, len(members), limit):
            chunk = members[start:start + limit]
            if len(chunk) == len(seeds) and all(runs is chunk[0][0] for runs, _ in chunk):
                packs.append(row_pack(chunk[0][0], out, seeds))
                continue
            name = f"{chunk[0][0].row.name}-seed-{chunk[0][1]}"
            packs.append(PackPlan(name, out / "packs" / name, chunk, order_seed=seeds[0]))
    order = {id(runs): i for i, runs in enumerate(packed)}
    return sorted(packs, key=lambda pack: order[id(pack.members[0][0])])  # in the table's row order


def row_pack(runs, out: Path, seeds: tuple[int, ...]) -> PackPlan:
    return PackPlan(runs.row.name, out / "runs" / runs.row.name, [(runs, seed) for seed in seeds], seeds_form=True,
                    order_seed=seeds[0])


def member_spec(row: RowSpec, seed: int, folder: Path, labels: str | None) -> MemberSpec:
    """A row's seed as a --member: its method, store, temperature and method options, its run folder."""
    options = {**row.options.get("method_options", {}),
               **{k: row.options[k] for k in ("ce_weight", "kd_weight", "label_smoothing") if k in row.options}}
    return MemberSpec(f"{row.name}-seed-{seed}", row.method, seed, labels, row.options.get("temperature"), options,
                      str(folder))


def expected(row: RowSpec) -> dict:
    """What the config.json of a row's run (or of its pack) must hold to be skipped or continued."""
    return {"command": "train-student", "arch": row.student,
            **{k: row.options[k] for k in ("epochs", "val_fraction") if k in row.options}}


def mixed_step(pack: PackPlan, data: Path, device: str, labels, logs: Path) -> Step:
    """A mixed pack's step: train-student --member for each of its members not done yet; `labels(row)`: the path of
    a row's store (None: no teacher)."""
    specs = [member_spec(runs.row, seed, runs.folders[seed], labels(runs.row)) for runs, seed in pack.members]
    own = [(spec.record(), runs.folders[seed], {**expected(runs.row), "method": runs.row.method, "seed": seed})
           for spec, (runs, seed) in zip(specs, pack.members)]
    first = pack.members[0][0].row
    state, why, pending = members_state(pack.folder, own, expected(first))
    members = [a for i in (pending or range(len(specs))) for a in ("--member", member_text(specs[i]))]
    args = ["train-student", "--data", str(data), "--student", first.student,
            *option_args(shared_options(first), STUDENT_KEYS), "--order-seed", str(pack.order_seed), *members,
            "--device", device, "--out", str(pack.folder), *run_flag(state)]
    return Step("rows", f"pack {pack.name} ({len(specs)} members: {', '.join(pack.rows())})", args, state,
                logs / f"pack-{log_name(pack.name)}.log", why)
