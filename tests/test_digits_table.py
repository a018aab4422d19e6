"""benchmarks/digits_table.sh: its command list (--dry-run), how it resumes, its report's arithmetic and, marked
slow, the whole table once on the real digits (--smoke)."""
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "digits_table.sh"
LABEL_ROWS = ["vanilla", "ls", "random", "sl", "sl+gt", "sl-enc", "sl-ens", "sl-kd"]
MIX_ROWS = ["vanilla+mix", "aug-sl", "aug-sl-kd"]


def load_report():
    spec = importlib.util.spec_from_file_location("digits_table_report", REPO / "benchmarks" / "digits_table_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=1)
def methods() -> tuple[dict, ...]:
    out = subprocess.run([str(Path(sys.executable).with_name("labelopt")), "methods", "--json"], capture_output=True,
                         text=True, check=True, env=script_env(Path.home())).stdout
    return tuple(json.loads(out))


def baselines() -> list[str]:
    return [m["method"] for m in methods()
            if m["teacher_signals"] and m["method"] not in ("sl", "sl-kd") and m["mix"] == "-"]


def script_env(home: Path, **extra) -> dict:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home), **extra}
    if "PYTHONPATH" in os.environ:  # a worktree's checkout of labelopt, as the caller sees it
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def dry_run(out: Path, **env) -> list[list[str]]:
    run = subprocess.run(["bash", str(SCRIPT), str(out), "--dry-run"], capture_output=True, text=True, timeout=120,
                         env=script_env(out.parent, **env))
    assert run.returncode == 0, run.stderr
    return [line.split() for line in run.stdout.splitlines()]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.slow
def test_dry_run_lists_teachers_stores_and_every_row_and_seed(tmp_path):
    out = tmp_path / "out"
    commands = dry_run(out, SEEDS="0 1", EPOCHS="96")
    assert not out.exists()  # a dry run writes nothing
    assert sum(c[1] == "prepare" for c in commands) == 1
    teachers = [c for c in commands if c[1] == "train"]
    assert sorted(option(c, "--arch") for c in teachers) == ["resnet32", "resnet44", "resnet56"]
    assert all(option(c, "--epochs") == "15" for c in teachers)
    stores = {Path(option(c, "--out")).name: c for c in commands if c[1] == "generate-labels"}
    assert sorted(option(c, "--method") for c in stores.values()) == ["random", "sl", "sl", "sl", "sl-enc", "sl-ens"]
    assert [option(c, "--views") for c in stores.values() if option(c, "--views").startswith("mix:")] == ["mix:ricap:8"]
    assert [option(c, "--mix-gt") for c in stores.values() if "--mix-gt" in c] == ["0.5"]
    assert next(c for c in stores.values() if option(c, "--method") == "sl-ens").count("--teacher") == 3
    assert not any("--temperature" in c for c in stores.values())  # generate-labels' own default applies
    students = {option(c, "--out").split("/runs/", 1)[1]: c for c in commands if c[1] == "train-student"}
    rows = LABEL_ROWS + MIX_ROWS + baselines()
    assert set(students) == {f"{r}/seed{s}" for r in rows for s in (0, 1)}
    assert option(students["vanilla+mix/seed0"], "--mix") == "ricap" and "--teacher" not in students["aug-sl/seed1"]
    for row in ("aug-sl", "aug-sl-kd"):  # Aug-SL from the mix store: no teacher runs while students train
        assert Path(option(students[f"{row}/seed0"], "--labels")).name == "aug-r56-ricap8.h5", row
    assert all(option(c, "--epochs") == "96" for c in students.values())
    for row in LABEL_ROWS[2:]:
        assert Path(option(students[f"{row}/seed0"], "--labels")).name in stores, row
    for m in methods():  # warm-ups: the method's default scaled by 96 / 240, computed here independently
        if m["method"] in baselines():
            command = students[f"{m['method']}/seed1"]
            assert option(command, "--teacher").endswith("teachers/resnet56-seed0/last.pt")
            warmup = m["defaults"].get("warmup_epochs")
            expected = [] if warmup is None else [f"warmup_epochs={int(warmup * 96 / 240 + 0.5)}"]
            assert [command[i + 1] for i, a in enumerate(command) if a == "--method-option"] == expected
    assert commands[-2][:2] == ["labelopt", "evaluate"]


def fake_run(folder: Path, epochs: int, lines: int, warmup: int = 0, last_pt_newer: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"arch": "resnet20", "epochs": epochs, "warmup_epochs": warmup}))
    (folder / "last.pt").write_bytes(b"x")
    time.sleep(0.01)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "test_top1": 10.0 * e}) + "\n"
                                                  for e in range(lines)))
    if last_pt_newer:
        time.sleep(0.01)
        (folder / "last.pt").write_bytes(b"x")
    return folder


def test_run_state_complete_partial_absent_and_other(tmp_path):
    report = load_report()
    assert report.run_state(fake_run(tmp_path / "a", 5, 5), 5, 0)[0] == "complete"
    assert report.run_state(fake_run(tmp_path / "b", 5, 3), 5, 0)[0] == "partial"
    # killed after the last epoch's line, before its last.pt: not complete
    assert report.run_state(fake_run(tmp_path / "c", 5, 5, last_pt_newer=False), 5, 0)[0] == "partial"
    assert report.run_state(fake_run(tmp_path / "d", 2, 3, warmup=1), 2, 1)[0] == "complete"
    assert report.run_state(fake_run(tmp_path / "e", 2, 2, warmup=1), 2, 1)[0] == "partial"
    assert report.run_state(tmp_path / "missing", 5, 0)[0] == "absent"
    state, why = report.run_state(fake_run(tmp_path / "f", 3, 3), 5, 0)
    assert state == "other" and "--epochs 3" in why


@pytest.mark.slow
def test_dry_run_skips_complete_runs_resumes_partial_ones_and_stops_on_other_epochs(tmp_path):
    out = tmp_path / "out"
    fake_run(out / "runs" / "vanilla" / "seed0", 4, 4)
    fake_run(out / "runs" / "ls" / "seed0", 4, 2)
    commands = dry_run(out, SEEDS="0", EPOCHS="4", ROWS="vanilla ls")
    students = [c for c in commands if c[1] == "train-student"]
    assert [option(c, "--out").rsplit("/runs/", 1)[1] for c in students] == ["ls/seed0"]
    assert students[0][-1] == "--resume"
    run = subprocess.run(["bash", str(SCRIPT), str(out), "--dry-run"], capture_output=True, text=True, timeout=120,
                         env=script_env(tmp_path, SEEDS="0", EPOCHS="6", ROWS="vanilla"))
    assert run.returncode == 2 and "made with --epochs 4" in run.stderr


@pytest.mark.parametrize("env, message", [({"ROWS": "vanilla nope"}, "unknown row 'nope'"),
                                          ({"EPOCHS": "five"}, "EPOCHS must be a whole number"),
                                          ({"ENS_TEACHERS": "resnet32"}, "two or more")])
def test_bad_settings_are_refused_with_one_line(tmp_path, env, message):
    run = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), "--dry-run"], capture_output=True, text=True,
                         timeout=120, env=script_env(tmp_path, **env))
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


def test_checkpoints_evaluate_best_only_where_it_differs_from_last(tmp_path):
    report = load_report()
    flat = fake_run(tmp_path / "flat", 3, 3)  # test top-1 rises every epoch: best is last
    peaked = tmp_path / "peaked"
    peaked.mkdir()
    (peaked / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "test_top1": t}) + "\n"
                                                  for e, t in enumerate([50.0, 70.0, 70.0, 60.0])))
    manifest = [{"run": str(flat)}, {"run": str(peaked)}]
    assert report.checkpoints(manifest) == [str(flat / "last.pt"), str(peaked / "last.pt"), str(peaked / "best.pt")]
    assert report.best_epoch(peaked) == (1, 3)  # the first epoch reaching the maximum saved best.pt


def write_table_inputs(tmp_path: Path, metrics: dict) -> tuple[Path, Path, Path]:
    """A manifest, evaluate's JSON and settings for rows {row: [(top1, nll, ece) per seed]}; best = last."""
    manifest, runs = [], []
    for row, seeds in metrics.items():
        for seed, (top1, nll, ece) in enumerate(seeds):
            run = tmp_path / "runs" / row / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "config.json").write_text(json.dumps({"arch": "resnet20", "epochs": 3}))
            manifest.append(f"student\t{row}\t{seed}\t{run}")
            runs.append({"checkpoint": str(run / "last.pt"), "arch": "resnet20", "epoch": 2, "top1": top1,
                         "top5": 100.0, "nll": nll, "ece": ece})
    paths = tmp_path / "manifest.tsv", tmp_path / "evaluate.json", tmp_path / "settings.json"
    paths[0].write_text("\n".join(manifest) + "\n")
    paths[1].write_text(json.dumps({"dataset": {"name": "digits", "num_samples": 360}, "runs": runs}))
    paths[2].write_text(json.dumps({"student": "resnet20", "epochs": "3", "warmups": "", "seeds": "0 1 2",
                                    "teacher_epochs": "2", "views": "identity", "baselines": "kd fitnet"}))
    return paths


def test_report_means_stds_and_directions(tmp_path):
    report = load_report()
    metrics = {"vanilla": [(90.0, 0.40, 0.050), (91.0, 0.38, 0.060), (92.5, 0.35, 0.040)],
               "sl": [(93.0, 0.30, 0.080), (94.0, 0.28, 0.070), (93.5, 0.29, 0.075)],
               "kd": [(95.0, 0.20, 0.030), (95.5, 0.21, 0.031), (94.0, 0.22, 0.029)],
               "sl-kd": [(94.0, 0.25, 0.020), (94.5, 0.24, 0.021), (95.0, 0.23, 0.019)],
               "fitnet": [(89.0, 0.5, 0.1), (89.5, 0.5, 0.1), (90.0, 0.5, 0.1)]}
    text = report.report(*write_table_inputs(tmp_path, metrics), tmp_path)
    table = json.loads((tmp_path / "table.json").read_text())
    rows = {r["row"]: r for r in table["rows"]}
    for row, seeds in metrics.items():
        for i, key in enumerate(("top1", "nll", "ece")):
            values = np.array([s[i] for s in seeds])
            assert rows[row]["last"][key]["mean"] == pytest.approx(values.mean())
            assert rows[row]["last"][key]["std"] == pytest.approx(values.std(ddof=1))
    assert "| Vanilla | R20 | - | 3 | 91.17 ± 1.26 | 91.17 ± 1.26 |" in text
    assert "360 images, so one image is 0.28 % top-1" in text
    answers = {d["question"]: d for d in table["directions"]}
    # SL's ECE (0.075) is above Vanilla's (0.05): the seed's direction does not hold here
    assert not answers["does SL lower ECE vs Vanilla?"]["agrees"]
    # SL-KD 94.5 vs KD 94.83: lower, and a gap of -1.2 test images, within one std
    slkd = answers["does SL-KD beat KD on top-1?"]
    assert not slkd["agrees"] and "(-1.2 test images)" in slkd["digits"] and "within one std" in slkd["digits"]
    assert answers["does SL beat Vanilla on top-1?"]["agrees"]
    assert answers["does every distillation baseline beat Vanilla on top-1?"]["digits"].startswith("1 of 2")
    assert "does SL-Ens beat SL on top-1?" not in answers  # a row this table lacks answers nothing
    assert "does SL lower ECE vs Vanilla? CIFAR-100: SL 0.0213 vs Vanilla 0.0650 (yes)" in text
    assert all(math.isfinite(v) for r in table["rows"] for k in ("top1", "nll", "ece")
               for v in r["last"][k]["values"])


# CI's smoke runs the rows whose paths differ: a student alone, one teacher's store, the ensemble's store with
# sl-kd, an online baseline with a warm-up. Every method's own end-to-end run is in its test module; the full
# every-row smoke (`--smoke` without ROWS, ~9 min on 2 cores) is for a person checking the whole script.
SMOKE_ROWS = ["vanilla", "sl", "sl-kd", "kd", "ab"]


@pytest.mark.slow
def test_smoke_runs_its_rows_and_writes_the_table(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(SCRIPT), str(out), "--smoke"], capture_output=True, text=True, timeout=1500,
                         env=script_env(tmp_path, ROWS=" ".join(SMOKE_ROWS)))
    assert run.returncode == 0, run.stderr[-3000:]
    table = json.loads((out / "table.json").read_text())
    rows = {r["row"]: r for r in table["rows"] if r["kind"] == "student"}
    assert list(rows) == SMOKE_ROWS
    assert sorted(r["arch"] for r in table["rows"] if r["kind"] == "teacher") == ["resnet20", "resnet32"]
    for row in table["rows"]:
        assert row["seeds"] == 1
        for when in ("last", "best"):
            assert all(math.isfinite(row[when][k]["mean"]) for k in ("top1", "nll", "ece")), row["row"]
    assert table["test_images"] == 360
    markdown = (out / "table.md").read_text()
    assert run.stdout.endswith(markdown)
    for name in ("Vanilla", "SL", "SL-KD", "KD", "ab"):
        assert f"| {name} |" in markdown, name
    assert "does SL lower ECE vs Vanilla?" in markdown and "does SL-KD beat KD on top-1?" in markdown
