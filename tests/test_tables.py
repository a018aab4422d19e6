"""`labelopt table`: the table file (parsing and one-line refusals), the plan (which rows pack, the order, what is
skipped or resumed), the report's arithmetic, and, marked slow, a digits smoke end to end."""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.errors import UserError
from labelopt.pipeline.jobs import table_report
from labelopt.pipeline.jobs.table_checks import pack_refusal, store_state
from labelopt.pipeline.jobs.table_file import SHIPPED_TABLES, load_table, shipped_tables
from labelopt.pipeline.jobs.table_steps import DONE, NEW, RESUME, run_state
from labelopt.pipeline.jobs.tables import TableRequest, make_plan, narrowed

REPO = Path(__file__).resolve().parent.parent
DIGITS_ROWS = ["vanilla", "ls", "random", "sl", "sl+gt", "sl-enc", "sl-ens", "sl-kd", "vanilla+mix", "aug-sl",
               "aug-sl-kd", "kd", "fitnet", "at", "sp", "vid", "rkd", "pkt", "ab", "ft", "crd", "crd+kd", "kdss"]
PACKED = {"vanilla", "ls", "random", "sl", "sl+gt", "sl-enc", "sl-ens", "sl-kd", "vanilla+mix", "aug-sl", "aug-sl-kd",
          "kd"}

SMALL = """
title = "small"
prepare = "digits"
seeds = [0, 1]
[student]
arch = "resnet20"
epochs = 2
[teachers.t]
arch = "resnet20"
epochs = 3
[stores.s]
teacher = "t"
[[rows]]
name = "vanilla"
method = "vanilla"
[[rows]]
name = "sl"
method = "sl"
labels = "s"
[[rows]]
name = "fitnet"
method = "fitnet"
teacher = "t"
"""


def write_table(tmp_path: Path, text: str = SMALL, name: str = "t.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def fake_data(tmp_path: Path) -> str:
    """A folder the plan takes for prepared data (it reads nothing else of it)."""
    folder = tmp_path / "prepared"
    folder.mkdir(exist_ok=True)
    (folder / "meta.json").write_text("{}")
    return str(folder)


def plan_of(table: str, out: Path, **request):
    req = TableRequest(table, out, **request)
    return make_plan(narrowed(load_table(table, smoke=req.smoke), req), req)


# -- the table file ------------------------------------------------------------------------------------------------

def test_shipped_tables_parse_and_ship():
    assert {"digits", "cifar100-resnet20", "cifar100-resnet110", "cifar100-distillation"} <= set(shipped_tables())
    for name in shipped_tables():
        for smoke in (False, True):
            table = load_table(name, smoke=smoke)
            assert table.rows and table.seeds == (0, 1, 2), name
    assert '"tables/*.toml"' in (REPO / "pyproject.toml").read_text()  # package-data: found by name when installed
    digits = load_table("digits")
    assert [r.name for r in digits.rows] == DIGITS_ROWS
    assert digits.path == SHIPPED_TABLES / "digits.toml"


def test_smoke_merges_the_files_smoke_table(tmp_path):
    table = load_table("digits", smoke=True)
    assert table.smoke and table.teachers["r56"].arch == "resnet20"
    assert table.stores["ens"].teachers == ("r56", "r32")
    ft = next(r for r in table.rows if r.name == "ft")
    assert ft.options["method_options"] == {"warmup_epochs": 1, "paraphraser_bn": True}
    # --smoke's own part: one seed, one epoch, warm-ups of one epoch
    plan = plan_of("digits", tmp_path / "out", smoke=True, rows=("kdss", "sl"))
    assert plan.table.seeds == (0,)
    assert {s.args[s.args.index("--epochs") + 1] for s in plan.steps if "--epochs" in s.args} == {"1"}
    kdss = next(s for s in plan.steps if s.name.startswith("row kdss"))
    assert "warmup_epochs=1" in kdss.args


@pytest.mark.parametrize("edit, message", [
    (lambda t: "foo = 1\n" + t, "unknown key 'foo' in the file"),
    (lambda t: t.replace('name = "sl"\n', 'name = "sl"\ncolour = "red"\n'), "unknown key 'colour' in [[rows]] 'sl'"),
    (lambda t: t.replace("epochs = 2", "epochs = 0"), "[student] 'epochs': 0 is not an integer in [1,"),
    (lambda t: t.replace('method = "fitnet"', 'method = "nope"'), "'method': 'nope' is not one of vanilla"),
    (lambda t: t.replace('arch = "resnet20"\nepochs = 3', 'arch = "resnet7"\nepochs = 3'), "'arch': 'resnet7'"),
    (lambda t: t.replace("seeds = [0, 1]", "seeds = [1, 1]"), "each seed once"),
    (lambda t: t.replace('labels = "s"', 'labels = "missing"'), "row 'sl' labels 'missing' is neither a name"),
    (lambda t: t.replace('teacher = "t"\n[[rows]]', 'teacher = "nobody"\n[[rows]]'), "teacher 'nobody'"),
    (lambda t: t.replace('[stores.s]\nteacher = "t"', '[stores.s]\nteacher = "t"\nmethod = "sl-ens"'),
     "method sl-ens takes two or more teachers, got 1"),
    (lambda t: t.replace('labels = "s"', 'labels = "s"\nteacher = "t"'), "not both"),
    (lambda t: t.replace('prepare = "digits"', 'prepare = "digits"\ndata = "x"'), "one of the two"),
    (lambda t: t + '[smoke.rows.nope]\nepochs = 1\n', "[smoke.rows] names no row 'nope'"),
    (lambda t: t + '[[checks]]\nquestion = "q"\nmetric = "top1"\nrow = "sl"\nbetter = "higher"\nthan = "x"\n',
     "names no row 'x'"),
    (lambda t: t.replace('name = "vanilla"', 'name = "a/b"'), "a row's name is unique"),
    (lambda t: "seeds = [", "is not valid TOML"),
    (lambda t: "max_pack = 0\n" + t, "'max_pack' 0 is not an integer in [1,"),
])
def test_a_bad_file_is_refused_with_one_line_naming_the_file(tmp_path, edit, message):
    path = write_table(tmp_path, edit(SMALL))
    with pytest.raises(UserError) as caught:
        load_table(str(path))
    text = str(caught.value)
    assert message in text and str(path) in text and "\n" not in text


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('method = "sl"\nlabels', 'method = "kd"\nlabels'), "logits = true"),
    (lambda t: t.replace('method = "fitnet"\nteacher = "t"', 'method = "fitnet"\nlabels = "s"'),
     "cannot be served by a label store"),
    (lambda t: t.replace('method = "vanilla"', 'method = "vanilla"\nteacher = "t"'), "uses no teacher"),
    (lambda t: t.replace('method = "sl"\nlabels = "s"', 'method = "sl"'), "needs teacher signals"),
    (lambda t: t.replace('name = "fitnet"', 'name = "fitnet"\nmethod_options = { nope = 1 }'),
     "method_options has no 'nope'"),
])
def test_rows_the_method_would_refuse_are_refused_before_anything_runs(tmp_path, edit, message):
    path = write_table(tmp_path, edit(SMALL))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["table", str(path), "--out", str(out)])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_unknown_shipped_name_and_cli_filters_are_refused(tmp_path):
    result = CliRunner().invoke(main, ["table", "nope", "--out", str(tmp_path / "o")])
    shipped = "shipped table (cifar100-distillation, cifar100-resnet110, cifar100-resnet20, digits"
    assert result.exit_code == 1 and shipped in result.output
    result = CliRunner().invoke(main, ["table", "digits", "--out", str(tmp_path / "o"), "--rows", "sl,zzz", "--dry-run"])
    assert result.exit_code == 1 and "has no row 'zzz'" in result.output


# -- the plan -------------------------------------------------------------------------------------------------------

def test_the_digits_plan_packs_label_rows_and_runs_the_rest_one_seed_at_a_time(tmp_path):
    """The label rows of one student and options share packs of at most 16 (10 rows x 3 seeds, the stored mixes'
    included: 16 + 14); vanilla+mix (its own --mix) and kd's online teacher pack their own seeds; every other row
    trains one run per seed."""
    plan = plan_of("digits", tmp_path / "out")
    packed = {r.row.name for r in plan.rows if r.packed}
    assert packed == PACKED
    phases = [s.phase for s in plan.steps]
    assert phases == sorted(phases, key=["data", "teachers", "stores", "rows"].index)  # teachers, stores, rows
    rows = [s for s in plan.steps if s.phase == "rows"]
    assert len(rows) == 4 + 3 * (len(DIGITS_ROWS) - len(PACKED))
    members = {p.name: [(runs.row.name, seed) for runs, seed in p.members] for p in plan.packs}
    label_rows = [r for r in DIGITS_ROWS if r in PACKED - {"kd", "vanilla+mix"}]
    every = [(row, seed) for row in label_rows for seed in (0, 1, 2)]
    assert members == {"vanilla-seed-0": every[:16], "sl-enc-seed-1": every[16:],
                       "vanilla+mix": [("vanilla+mix", s) for s in (0, 1, 2)], "kd": [("kd", s) for s in (0, 1, 2)]}
    first = next(s for s in rows if s.name.startswith("pack vanilla-seed-0"))
    assert first.name == "pack vanilla-seed-0 (16 members: vanilla, ls, random, sl, sl+gt, sl-enc)"
    assert first.args[-3:-1] == ["--out", str(plan.out / "packs/vanilla-seed-0")] and "--seeds" not in first.args
    assert first.args[first.args.index("--order-seed") + 1] == "0" and "--method" not in first.args
    specs = [first.args[i + 1] for i, a in enumerate(first.args) if a == "--member"]
    assert len(specs) == 16
    assert specs[0] == f"name=vanilla-seed-0,method=vanilla,seed=0,out={plan.out}/runs/vanilla/seed-0"
    assert f"name=sl-seed-2,method=sl,seed=2,labels={plan.out}/labels/sl.h5,out={plan.out}/runs/sl/seed-2" in specs
    second = next(s for s in rows if s.name.startswith("pack sl-enc-seed-1"))
    assert rows.index(second) > rows.index(first) and "(14 members: sl-enc, sl-ens, sl-kd, aug-sl, aug-sl-kd)" in \
        second.name
    augs = [second.args[i + 1] for i, a in enumerate(second.args) if a == "--member" and "aug-sl" in second.args[i + 1]]
    assert f"name=aug-sl-seed-0,method=aug-sl,seed=0,labels={plan.out}/labels/aug.h5,out={plan.out}/runs/aug-sl/seed-0" \
        in augs and len(augs) == 6
    kd = next(s for s in rows if s.name.startswith("row kd ("))
    assert kd.args[kd.args.index("--seeds") + 1] == "0,1,2" and kd.args[-3:-1] == ["--out", str(plan.out / "runs/kd")]
    assert all(r.folders == {s: plan.out / "runs" / r.row.name / f"seed-{s}" for s in (0, 1, 2)} for r in plan.rows)
    fitnet = next(r for r in plan.rows if r.row.name == "fitnet")
    assert "features" in fitnet.why_not_packed
    assert {s.state for s in plan.steps} == {NEW}
    ens = next(s for s in plan.steps if s.name == "store ens")
    assert ens.args.count("--teacher") == 3 and str(plan.out / "teachers/r56/last.pt") in ens.args


def test_rows_filter_keeps_only_what_they_need(tmp_path):
    plan = plan_of("digits", tmp_path / "out", rows=("sl-kd", "vanilla"), seeds=(4, 5))
    assert [s.name for s in plan.steps] == ["data digits", "teacher r56", "teacher r32", "teacher r44", "store ens",
                                            "pack vanilla-seed-4 (4 members: vanilla, sl-kd)"]
    assert plan.table.checks == []  # each of the file's checks names a row left out
    assert plan.table.seeds == (4, 5)


def test_pack_refusal_agrees_with_check_member_for_every_method():
    """pack_refusal decides from the method's declarations; what check_member refuses of a built method must
    agree."""
    from labelopt.pipeline.jobs.table_file import RowSpec, TableSpec
    from labelopt.stages.distillers import DISTILLERS, DistillContext

    table = TableSpec(Path("t.toml"), "t", "", "digits", None, None, (0,), {}, {}, [], [])
    for name, method in DISTILLERS.items():
        row = RowSpec(name, name, name, "resnet20", None, ("t",), {})
        if pack_refusal(row, table) or method.student_taps:
            continue
        distiller = method(DistillContext(10, 100, 4.0))
        assert not any(p.requires_grad for p in distiller.parameters()), name
        assert distiller.views_per_sample == 1 and not distiller.warmup_epochs, name


def fake_run(folder: Path, epochs: int, lines: int, *, seed: int = 0, method: str = "vanilla", seeds=None,
             last_newer: bool = True, pack=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"command": "train-student", "arch": "resnet20", "method": method, "epochs": epochs, "seed": seed,
              "seeds": seeds or [], **({"pack": pack} if pack else {})}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "last.pt").write_bytes(b"x")
    time.sleep(0.01)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(lines)))
    if last_newer:
        time.sleep(0.01)
        (folder / "last.pt").write_bytes(b"x")
    return folder


def test_run_state_done_resume_new_and_refused(tmp_path):
    expect = {"arch": "resnet20", "epochs": 4}
    assert run_state(fake_run(tmp_path / "a", 4, 4), expect)[0] == DONE
    assert run_state(fake_run(tmp_path / "b", 4, 2), expect) == (RESUME, "2 of 4 epochs")
    # killed after the last epoch's line and before its last.pt: not done
    assert run_state(fake_run(tmp_path / "c", 4, 4, last_newer=False), expect)[0] == RESUME
    assert run_state(tmp_path / "missing", expect)[0] == NEW
    with pytest.raises(UserError, match="made with epochs 3 and this table asks for 4"):
        run_state(fake_run(tmp_path / "d", 3, 3), expect)


def test_done_steps_are_skipped_and_partial_ones_resumed(tmp_path):
    path = write_table(tmp_path)
    out = tmp_path / "out"
    (out / "data" / "digits").mkdir(parents=True)
    (out / "data" / "digits" / "meta.json").write_text("{}")
    for seed in (0, 1):  # the vanilla pack: both members done
        fake_run(out / "runs/vanilla" / f"seed-{seed}", 2, 2, seed=seed)
    fake_run(out / "runs/fitnet/seed-0", 2, 2, method="fitnet")  # fitnet: seed 0 done, seed 1 half
    fake_run(out / "runs/fitnet/seed-1", 2, 1, seed=1, method="fitnet")
    teacher = fake_run(out / "teachers/t", 3, 1)
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "command": "train"}))
    steps = plan_of(str(path), out).steps
    states = {s.name: (s.state, s.args[-1]) for s in steps}
    assert states == {"data digits": (DONE, str(out / "data")), "teacher t": (RESUME, "--resume"),
                      "store s": (NEW, str(out / "labels/s.h5")),
                      "pack vanilla-seed-0 (4 members: vanilla, sl)": (NEW, "--overwrite"),
                      "row fitnet seed 0": (DONE, "--overwrite"), "row fitnet seed 1": (RESUME, "--resume")}
    # the pack trains the members not done yet: sl's two
    pack = next(s for s in steps if s.name.startswith("pack "))
    assert [a.split(",")[0] for a in pack.args if a.startswith("name=")] == ["name=sl-seed-0", "name=sl-seed-1"]
    assert pack.why == "2 members to train, 2 done"
    # the CLI's dry run prints the same, and writes nothing
    result = CliRunner().invoke(main, ["table", str(path), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0 and "[resume] labelopt train --data" in result.output
    assert not (out / "logs").exists()


def test_a_pack_resumes_from_its_own_folder(tmp_path):
    """A row's own pack resumes when its folder holds its seeds; a mixed one when it holds the members not done."""
    path = write_table(tmp_path, SMALL.replace('name = "sl"\nmethod = "sl"', 'name = "sl"\nmethod = "sl"\nepochs = 3'))
    out, data = tmp_path / "out", fake_data(tmp_path)
    fake_run(out / "runs/vanilla", 2, 1, seeds=[0, 1])
    fake_run(out / "runs/vanilla/seed-0", 2, 1)
    step = next(s for s in plan_of(str(path), out, data=data).steps if s.name.startswith("row vanilla"))
    assert (step.state, step.args[-1]) == (RESUME, "--resume")  # sl's epochs differ: vanilla packs alone
    labels = str(out / "labels/s.h5")
    members = [{"name": f"{row}-seed-{seed}", "method": row, "seed": seed, "labels": labels if row == "sl" else None}
               for row in ("vanilla", "sl") for seed in (0, 1)]
    fake_run(out / "packs/vanilla-seed-0", 2, 1, pack={"members": members})
    step = next(s for s in plan_of(str(write_table(tmp_path)), out, data=data).steps if s.name.startswith("pack "))
    assert (step.state, step.args[-1], step.args.count("--member")) == (RESUME, "--resume", 4)
    for seed in (0, 1):  # vanilla done since: the pack's folder holds other members than those left
        fake_run(out / "runs/vanilla" / f"seed-{seed}", 2, 2, seed=seed)
    step = next(s for s in plan_of(str(write_table(tmp_path)), out, data=data).steps if s.name.startswith("pack "))
    assert (step.state, step.args[-1], step.args.count("--member")) == (NEW, "--overwrite", 2)


def test_max_pack_splits_packs_and_one_trains_every_run_alone(tmp_path):
    path = write_table(tmp_path, SMALL.replace("seeds = [0, 1]", "seeds = [0, 1]\nmax_pack = 3"))
    data = fake_data(tmp_path)
    plan = plan_of(str(path), tmp_path / "out", data=data)
    assert plan.table.max_pack == 3
    assert {p.name: [(r.row.name, s) for r, s in p.members] for p in plan.packs} == {
        "vanilla-seed-0": [("vanilla", 0), ("vanilla", 1), ("sl", 0)], "sl-seed-1": [("sl", 1)]}
    last = next(s for s in plan.steps if s.name.startswith("pack sl-seed-1"))
    assert last.args[last.args.index("--order-seed") + 1] == "0"  # every pack's members: the table's first seed
    # --max-pack overrides the file: 1 is no pack at all, every run its own process
    plan = plan_of(str(path), tmp_path / "out", data=data, max_pack=1)
    assert plan.packs == [] and not any(r.packed for r in plan.rows)
    assert {r.row.name: r.why_not_packed for r in plan.rows}["vanilla"] == "max_pack 1: every run its own process"
    steps = [s for s in plan.steps if s.phase == "rows"]
    assert len(steps) == 6 and not any("--member" in s.args or "--seeds" in s.args or "--order-seed" in s.args
                                       for s in steps)
    # an online teacher's row packs its own seeds only: 4 seeds are more than max_pack 3, so one run per seed
    table = SMALL.replace('name = "fitnet"\nmethod = "fitnet"', 'name = "kd"\nmethod = "kd"')
    plan = plan_of(str(write_table(tmp_path, table, "kd.toml")), tmp_path / "out", data=data, seeds=(0, 1, 2, 3),
                   max_pack=3)
    kd = next(r for r in plan.rows if r.row.name == "kd")
    assert not kd.packed and "more than a pack holds (max_pack 3)" in kd.why_not_packed
    assert [s.name for s in plan.steps if "kd" in s.name] == [f"row kd seed {s}" for s in range(4)]


def test_rows_share_a_pack_only_with_the_same_student_and_options(tmp_path):
    table = SMALL.replace('name = "sl"\nmethod = "sl"', 'name = "sl"\nmethod = "sl"\ntemperature = 4.0') + \
        '[[rows]]\nname = "ls"\nmethod = "ls"\nlabel_smoothing = 0.2\n' + \
        '[[rows]]\nname = "long"\nmethod = "vanilla"\nepochs = 3\n' + \
        '[[rows]]\nname = "r32"\nmethod = "vanilla"\nstudent = "resnet32"\n'
    plan = plan_of(str(write_table(tmp_path, table)), tmp_path / "out", data=fake_data(tmp_path))
    assert [(p.name, p.rows(), p.seeds_form) for p in plan.packs] == [
        ("vanilla-seed-0", ["vanilla", "sl", "ls"], False), ("long", ["long"], True), ("r32", ["r32"], True)]
    mixed = next(s for s in plan.steps if s.name.startswith("pack vanilla-seed-0"))
    specs = [mixed.args[i + 1] for i, a in enumerate(mixed.args) if a == "--member"]
    assert "name=sl-seed-1,method=sl,seed=1,labels=" in specs[3] and specs[3].endswith(",temperature=4.0,out=" + str(
        tmp_path / "out/runs/sl/seed-1"))
    assert "label_smoothing=0.2" in specs[4] and "--temperature" not in mixed.args


def test_store_state_done_when_it_opens_refused_when_made_otherwise(tmp_path):
    from labelopt.pipeline.jobs.table_file import StoreSpec
    from labelopt.tests.store_fakes import build

    path = tmp_path / "s.h5"
    build(path)
    assert store_state(path, StoreSpec("s", "teacher", ("t",), {}))[0] == DONE
    with pytest.raises(UserError, match="made by method teacher"):
        store_state(path, StoreSpec("s", "sl", ("t",), {}))
    assert store_state(tmp_path / "none.h5", StoreSpec("s", "sl", ("t",), {}))[0] == NEW


def test_lanes_run_each_step_in_its_own_process_and_stop_at_the_first_failure(tmp_path):
    from labelopt.pipeline.jobs.table_steps import Lanes, Step

    bad = ["train", "--data", str(tmp_path / "nothing"), "--arch", "nope", "--out", str(tmp_path / "run")]  # no torch
    steps = [Step("rows", "ok", ["--version"], NEW, tmp_path / "logs/ok.log"),
             Step("rows", "skipped", ["--nope"], DONE, tmp_path / "logs/done.log"),
             Step("rows", "bad", bad, NEW, tmp_path / "logs/bad.log"),
             Step("rows", "never", ["--version"], NEW, tmp_path / "logs/never.log")]
    lines = []
    with pytest.raises(UserError) as caught:
        Lanes(1, lines.append).run(steps)
    assert "labelopt, version" in (tmp_path / "logs/ok.log").read_text()
    assert not (tmp_path / "logs/done.log").exists() and not (tmp_path / "logs/never.log").exists()
    text = str(caught.value)
    assert text.startswith("bad failed (exit 2): Error:") and str(tmp_path / "logs/bad.log") in text
    assert "table: ok: done in" in lines[1] and any("bad: FAILED (exit 2)" in line for line in lines)


# -- the report -----------------------------------------------------------------------------------------------------

def test_report_means_stds_best_by_validation_and_checks(tmp_path):
    path = write_table(tmp_path, SMALL + '[[checks]]\nquestion = "does SL beat Vanilla?"\nmetric = "top1"\n'
                                         'row = "sl"\nbetter = "higher"\nthan = "vanilla"\npublished = [69.17, 67.66]\n')
    plan = plan_of(str(path), tmp_path / "out", data=fake_data(tmp_path))
    numbers = {"vanilla": [(90.0, 0.40, 0.050), (92.5, 0.35, 0.040)], "sl": [(93.0, 0.30, 0.080), (94.0, 0.28, 0.070)],
               "fitnet": [(89.0, 0.5, 0.1), (90.0, 0.5, 0.1)]}
    evaluated = {str(plan.teachers["t"] / "last.pt"): {"arch": "resnet20", "epoch": 3, "top1": 95.0, "top5": 100.0,
                                                      "nll": 0.2, "ece": 0.03}}
    for runs in plan.rows:
        for (seed, folder), (top1, nll, ece) in zip(runs.folders.items(), numbers[runs.row.name]):
            folder.mkdir(parents=True)
            # only vanilla's runs chose best.pt on a validation split; sl's best.pt was chosen on test
            val = 0.1 if runs.row.name == "vanilla" else 0.0
            (folder / "config.json").write_text(json.dumps({"val_fraction": val}))
            (folder / "best.pt").write_bytes(b"x")
            record = {"epoch": 2, "top1": top1, "top5": 100.0, "nll": nll, "ece": ece}
            evaluated[str(folder / "last.pt")] = record
            evaluated[str(folder / "best.pt")] = {**record, "top1": top1 + 1}
    checkpoints = table_report.checkpoints_of(plan)
    assert sum(p.endswith("best.pt") for p in checkpoints) == 2  # vanilla's two, never sl's test-selected ones
    report = table_report.build_report(plan, evaluated, {"name": "digits", "split": "test", "num_samples": 360})
    rows = {r["name"]: r for r in report["rows"]}
    for name, seeds in numbers.items():
        for i, key in enumerate(("top1", "nll", "ece")):
            values = np.array([s[i] for s in seeds])
            assert rows[name]["last"][key]["mean"] == pytest.approx(values.mean())
            assert rows[name]["last"][key]["std"] == pytest.approx(values.std(ddof=1))
    assert rows["vanilla"]["best_by_validation"]["top1"]["mean"] == pytest.approx(92.25)
    assert rows["sl"]["best_by_validation"] is None
    text = table_report.markdown(report)
    assert "| vanilla | R20 | - | 2 | 91.25 ± 1.77 | 100.00 ± 0.00 | 0.3750 ± 0.0354 | 0.0450 ± 0.0071 |" in text
    assert "| sl | R20 | store s (t) | 2 | 93.50 ± 0.71 |" in text and "| fitnet | R20 | t (online) | 2 |" in text
    assert "Best epoch by validation" in text and "| vanilla | R20 | - | 2 | 92.25 ± 1.77 |" in text
    (check,) = report["checks"]
    assert check["ours"] and check["published"] and check["agrees"] and "(+8.1 test images)" in check["text"]


def test_the_distillation_benchmark_holds_every_baseline_for_each_pair_with_its_teacher():
    table = load_table("cifar100-distillation")
    baselines = ["vanilla", "kd", "fitnet", "at", "sp", "vid", "rkd", "pkt", "ab", "ft", "crd", "crd+kd", "kdss"]
    pairs = {"r20": ("resnet20", "r56", "resnet56"), "r32": ("resnet32", "r110", "resnet110"),
             "r8x4": ("resnet8x4", "r32x4", "resnet32x4")}
    for prefix, (student, teacher, arch) in pairs.items():
        rows = [r for r in table.rows if r.name.startswith(f"{prefix}-")]
        assert [r.method for r in rows] == [m for m in baselines if (prefix, m) != ("r32", "kdss")], prefix
        assert all(r.student == student and r.teachers == (() if r.method == "vanilla" else (teacher,)) and
                   r.published["top1"] > 60 for r in rows), prefix
        assert table.teachers[teacher].arch == arch
    assert next(r for r in table.rows if r.name == "r20-crd").published == {"top1": 71.16}


# -- end to end -----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_distillation_benchmarks_smoke_trains_ft_from_its_pairs_teacher_beside_the_published(tiny_cifar_dir,
                                                                                                  tmp_path):
    """--smoke: every run 1 epoch (warm-ups 1), a resnet20 for the resnet56 teacher, and ft with the paraphraser
    that has BatchNorm (a 1-epoch teacher's maps send the benchmark's to nan)."""
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "labelopt", "table", "cifar100-distillation", "--out", str(out),
                          "--smoke", "--data", str(tiny_cifar_dir), "--rows", "r20-vanilla,r20-ft"],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "LABELOPT_PROGRESS_SECONDS": "1000"})
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads((out / "table.json").read_text())["rows"]}
    assert list(rows) == ["r20-vanilla", "r20-ft"] and rows["r20-ft"]["teacher"] == "r56 (online)"
    assert rows["r20-ft"]["published"]["top1"] == 69.84 and "69.84" in (out / "table.md").read_text()
    config = json.loads((out / "runs/r20-ft/seed-0/config.json").read_text())
    assert config["method_resolved"]["options"]["paraphraser_bn"] is True
    assert config["method_resolved"]["options"]["warmup_epochs"] == 1
    assert json.loads((out / "teachers/r56/config.json").read_text())["arch"] == "resnet20"
    lines = [json.loads(x) for x in (out / "runs/r20-ft/seed-0/metrics.jsonl").read_text().splitlines()]
    assert lines and all(math.isfinite(x["train_loss"]) for x in lines)


@pytest.mark.slow
def test_digits_smoke_runs_a_mixed_pack_and_an_online_row_as_packs_and_reports_mean_std(tmp_path):
    """The shipped digits table under --smoke: a resnet20 teacher, the sl store, vanilla (no teacher) and sl (the
    store) as one mixed pack of 2 rows x 2 seeds, kd (online teacher) as its own pack of two seeds, two lanes; then
    the same command finds everything done."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "labelopt", "table", "digits", "--out", str(out), "--smoke", "--seeds", "0,1",
               "--rows", "vanilla,sl,kd", "--jobs", "2"]
    env = {**os.environ, "LABELOPT_PROGRESS_SECONDS": "1000"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "table: pack vanilla-seed-0 (4 members: vanilla, sl): done" in run.stderr
    assert "row kd (pack of 2 seeds): done" in run.stderr
    table = json.loads((out / "table.json").read_text())
    rows = {r["name"]: r for r in table["rows"]}
    assert list(rows) == ["vanilla", "sl", "kd"] and all(r["packed"] and r["seeds"] == [0, 1] for r in rows.values())
    assert rows["sl"]["teacher"] == "store sl (r56)" and rows["kd"]["teacher"] == "r56 (online)"
    assert (out / "packs/vanilla-seed-0/last.pt").is_file() and not (out / "packs/vanilla-seed-0/sl-seed-0").exists()
    for row in rows.values():
        for key in ("top1", "top5", "nll", "ece"):
            stats = row["last"][key]
            assert len(stats["values"]) == 2 and all(math.isfinite(v) for v in stats["values"])
            assert stats["mean"] == pytest.approx(np.mean(stats["values"]))
            assert stats["std"] == pytest.approx(np.std(stats["values"], ddof=1))
    assert [t["arch"] for t in table["teachers"]] == ["resnet20"]
    # the table's runs hold out a validation split (val_fraction 0.1): best.pt is reported as chosen on it
    assert all(r["best_by_validation"] and len(r["best_by_validation"]["top1"]["values"]) == 2 for r in rows.values())
    markdown = (out / "table.md").read_text()
    assert run.stdout == markdown and "| SL | R20 | store sl (r56) | 2 |" in markdown
    assert "Best epoch by validation" in markdown
    for member in ("runs/vanilla/seed-0", "runs/sl/seed-1", "runs/kd/seed-0", "runs/kd/seed-1"):
        assert (out / member / "last.pt").is_file()
    config = json.loads((out / "runs/sl/seed-1/config.json").read_text())  # as a run of its own
    assert (config["method"], config["seed"], config["order_seed"]) == ("sl", 1, 0)
    assert config["labels"] == str(out / "labels/sl.h5")
    assert config["pack"]["folder"] == str(out / "packs/vanilla-seed-0")
    again = subprocess.run(command + ["--dry-run", "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {s["state"] for s in json.loads(again.stdout)["steps"]} == {"done"}
