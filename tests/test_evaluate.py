"""labelopt evaluate: metrics from checkpoints, mean ± std over seeds, reliability PNGs, refusals."""
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.models import create_model
from labelopt.pipeline.run.checkpoints import save_checkpoint
from labelopt.pipeline.data.datasets import open_dataset
from labelopt.pipeline.jobs import reports
from labelopt.pipeline.jobs.evaluation import COMPARISON_PNG, checkpoint_names, plot_file_names
from labelopt.pipeline.run.prediction import eval_loader, predict
from labelopt.pipeline.run.options import TrainOptions
from labelopt.pipeline.run.training import train
from labelopt.pipeline.data.normalize import Normalizer
from labelopt.stages.metrics import CalibrationBins, classification_metrics


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def two_seeds(tiny_cifar_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-runs")
    for seed in (0, 1):
        train(TrainOptions(data=str(tiny_cifar_dir), arch="resnet20", out=str(root / f"s{seed}"), epochs=1,
                           batch_size=32, seed=seed, device="cpu", val_fraction=0.1 if seed == 0 else 0.0),
              log=lambda m: None)  # s0 has a validation split, so a best.pt
    return [root / f"s{seed}" / "last.pt" for seed in (0, 1)]


def test_json_metrics_match_a_direct_computation(two_seeds, tiny_cifar_dir, tmp_path):
    code, out = run_cli("evaluate", two_seeds[0], "--data", tiny_cifar_dir, "--json", "--device", "cpu")
    assert code == 0, out
    result = json.loads(out)
    data = open_dataset(tiny_cifar_dir)
    body = torch.load(two_seeds[0], weights_only=True)
    model = create_model("resnet20", 10)
    model.load_state_dict(body["model"])
    logits, labels = predict(model, eval_loader(data, "test", torch.device("cpu")), Normalizer(data.mean, data.std, "cpu"))
    expected = classification_metrics(logits, labels)
    run = result["runs"][0]
    for key in ("top1", "top5", "nll", "ece"):
        assert run[key] == pytest.approx(expected[key], rel=1e-6)
    assert run["num_samples"] == 40 and result["dataset"]["fingerprint"] == data.fingerprint("test")
    # "epoch" counts the epochs done, like train's "epoch 1/1" line; metrics.jsonl numbers its lines from 0.
    history = [json.loads(line) for line in (two_seeds[0].parent / "metrics.jsonl").read_text().splitlines()]
    assert run["epoch"] == len(history) == history[-1]["epoch"] + 1 == 1
    assert run["run"] == "s0" and "reliability_png" not in run  # no --out, no plot


def test_several_checkpoints_give_mean_std_table_and_pngs(two_seeds, tiny_cifar_dir, tmp_path):
    code, out = run_cli("evaluate", *two_seeds, "--data", tiny_cifar_dir, "--out", tmp_path / "ev", "--device", "cpu")
    assert code == 0, out
    assert "mean ± std (2)" in out and "top-1 %" in out
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    values = [r["top1"] for r in saved["runs"]]
    assert saved["summary"]["top1"]["mean"] == pytest.approx(sum(values) / 2)
    assert "comparison_png" not in saved and not (tmp_path / "ev" / COMPARISON_PNG).exists()  # only with --compare
    for seed, run in zip((0, 1), saved["runs"]):
        png = tmp_path / "ev" / f"reliability-s{seed}-last.png"
        assert run["run"] == f"s{seed}" and run["reliability_png"] == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.name in out


def table_rows(out: str) -> list[dict]:
    """The printed table as dicts keyed by header (cells are separated by two or more spaces)."""
    lines = [line for line in out.splitlines() if line.strip()]
    top = next(i for i, line in enumerate(lines) if line.startswith("run "))
    header = re.split(r"\s{2,}", lines[top].strip())
    rows = []
    for line in lines[top + 2:]:
        if line.startswith("written in"):
            break
        rows.append(dict(zip(header, re.split(r"\s{2,}", line.strip()))))
    return rows


def test_compare_names_plots_after_runs_and_draws_one_curve_per_run(two_seeds, tiny_cifar_dir, tmp_path,
                                                                    monkeypatch):
    s0, s1 = two_seeds
    best = s0.with_name("best.pt")
    drawn, titles = {}, {}
    real_compare, real_plot = reports.plot_comparison, reports.plot_reliability

    def plot_comparison(curves, path, title):
        drawn.update(curves=curves, path=path, figure=reports.comparison_figure(curves, title))
        real_compare(curves, path, title)

    def plot_reliability(bins, path, title):
        titles[path.name] = title
        real_plot(bins, path, title)

    monkeypatch.setattr(reports, "plot_comparison", plot_comparison)
    monkeypatch.setattr(reports, "plot_reliability", plot_reliability)
    ev = tmp_path / "ev"
    code, out = run_cli("evaluate", s0, best, s1, "--data", tiny_cifar_dir, "--out", ev, "--compare",
                        "--device", "cpu")
    assert code == 0, out
    saved = json.loads((ev / "metrics.json").read_text())
    runs = saved["runs"]
    # Two checkpoints of run s0 keep their stem; s1 is alone in its folder and keeps the folder's name.
    assert [r["run"] for r in runs] == ["s0/last", "s0/best", "s1"]
    files = ["reliability-s0-last.png", "reliability-s0-best.png", "reliability-s1-last.png"]
    assert [r["reliability_png"] for r in runs] == [str(ev / f) for f in files]
    assert [r["checkpoint"] for r in runs] == [str(s0), str(best), str(s1)]
    assert sorted(titles) == sorted(files)
    for run, file in zip(runs, files):
        assert titles[file].startswith(f"{run['run']} ({Path(run['checkpoint']).name}): resnet20, 1 epoch\n")
        assert (ev / file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The comparison: its file is recorded, and its figure holds one curve per run, the run's own bins.
    assert saved["comparison_png"] == str(ev / COMPARISON_PNG) == str(drawn["path"])
    assert (ev / COMPARISON_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [line for line in drawn["figure"].axes[0].get_lines() if line.get_label() != reports.PERFECT]
    assert len(lines) == len(runs) == len(drawn["curves"])
    for line, run, (name, bins) in zip(lines, runs, drawn["curves"]):
        assert name == run["run"] and line.get_label() == f"{run['run']} (ECE {run['ece']:.4f})"
        assert bins.num_samples == 40 and bins.ece() == pytest.approx(run["ece"], abs=1e-9)
        x, y = reports.reliability_curve(bins)
        np.testing.assert_array_equal(line.get_xdata(), x)
        np.testing.assert_array_equal(line.get_ydata(), y)
    # The table prints each run under the same name and the same epoch count as metrics.json.
    rows = table_rows(out)
    assert [r["run"] for r in rows] == [r["run"] for r in runs]
    assert [int(r["epoch"]) for r in rows] == [r["epoch"] for r in runs] == [1, 1, 1]


def bins_of(conf, correct, n_bins=5) -> CalibrationBins:
    """Bins from (confidence, correct) pairs, written out: right-closed equal-width bins."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        return CalibrationBins(np.linspace(0, 1, n_bins + 1), counts,
                               np.bincount(idx, conf, n_bins) / counts, np.bincount(idx, correct, n_bins) / counts)


def test_comparison_figure_draws_each_runs_filled_bins_in_order():
    a = bins_of([0.95, 0.9, 0.5, 0.45], [1, 1, 0, 1])  # bins 3 and 5 filled
    b = bins_of([0.1, 0.3, 0.7], [0, 1, 1])  # bins 1, 2 and 4
    fig = reports.comparison_figure([("teacher", a), ("student", b)], "t")
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == [reports.PERFECT, f"teacher (ECE {a.ece():.4f})", f"student (ECE {b.ece():.4f})"]
    teacher, student = ax.get_lines()[1:]
    np.testing.assert_allclose(teacher.get_xdata(), [0.475, 0.925])
    np.testing.assert_allclose(teacher.get_ydata(), [0.5, 1.0])
    np.testing.assert_allclose(student.get_xdata(), [0.1, 0.3, 0.7])
    np.testing.assert_allclose(student.get_ydata(), [0.0, 1.0, 1.0])
    assert teacher.get_color() != student.get_color()


@pytest.mark.parametrize("paths, names, files", [
    (["r/a/last.pt"], ["a"], ["reliability-a-last.png"]),
    (["r/a/last.pt", "r/a/best.pt", "r/b/last.pt"], ["a/last", "a/best", "b"],
     ["reliability-a-last.png", "reliability-a-best.png", "reliability-b-last.png"]),
    (["x/seed0/last.pt", "y/seed0/last.pt"], ["x/seed0/last", "y/seed0/last"],
     ["reliability-x-seed0-last.png", "reliability-y-seed0-last.png"]),
    (["r/a/last.pt", "r/a/last.pt"], ["a", "a (2)"], ["reliability-a-last.png", "reliability-a_2_-last.png"]),
    (["p/Run 1/last.pt", "q/Run:1/last.pt"], ["Run 1", "Run:1"],
     ["reliability-Run_1-last.png", "reliability-Run_1-last-2.png"]),
    (["p/run/last.pt", "q/RUN/last.pt"], ["run", "RUN"], ["reliability-run-last.png", "reliability-RUN-last-2.png"]),
    (["r/reliability/comparison.pt"], ["reliability"], ["reliability-reliability-comparison.png"]),
])
def test_names_tell_checkpoints_apart_and_no_plot_overwrites_another(tmp_path, paths, names, files):
    paths = [str(tmp_path / p) for p in paths]
    assert checkpoint_names(paths) == names
    assert plot_file_names(names, paths) == files
    assert COMPARISON_PNG not in files


def bad_checkpoint_cases(tmp_path, two_seeds):
    body = torch.load(two_seeds[0], weights_only=True)
    cases = {}
    cases["random-bytes"] = tmp_path / "noise.pt"
    cases["random-bytes"].write_bytes(b"\x00not a checkpoint" * 10)
    cases["plain-state-dict"] = tmp_path / "plain.pt"
    torch.save(create_model("resnet20", 10).state_dict(), cases["plain-state-dict"])
    cases["other-classes"] = tmp_path / "c100.pt"
    save_checkpoint(cases["other-classes"], {**body, "num_classes": 100,
                                             "model": create_model("resnet20", 100).state_dict()})
    cases["other-arch"] = tmp_path / "arch.pt"
    save_checkpoint(cases["other-arch"], {k: v for k, v in body.items() if k not in ("format", "version")} | {
        "arch": "resnet32"})
    return cases


class Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/labelopt-pwned",))


@pytest.mark.parametrize("case, message", [
    ("random-bytes", "is not a labelopt checkpoint"),
    ("plain-state-dict", "is not a labelopt checkpoint (no 'labelopt.checkpoint' header)"),
    ("other-classes", "was trained for 100 classes but the data has 10"),
    ("other-arch", "weights do not fit a resnet32"),
])
def test_bad_checkpoints_are_refused(two_seeds, tiny_cifar_dir, tmp_path, case, message):
    path = bad_checkpoint_cases(tmp_path, two_seeds)[case]
    code, out = run_cli("evaluate", path, "--data", tiny_cifar_dir, "--device", "cpu")
    assert code != 0 and message in out and "Traceback" not in out


def test_a_pickle_exploit_is_refused_without_running(tiny_cifar_dir, tmp_path):
    import os
    path = tmp_path / "evil.pt"
    torch.save({"format": "labelopt.checkpoint", "payload": Exploit()}, path)
    if os.path.exists("/tmp/labelopt-pwned"):
        os.remove("/tmp/labelopt-pwned")
    code, out = run_cli("evaluate", path, "--data", tiny_cifar_dir, "--device", "cpu")
    assert code != 0 and "is not a labelopt checkpoint" in out
    assert not os.path.exists("/tmp/labelopt-pwned")


def test_missing_checkpoint_and_unprepared_data(two_seeds, tiny_cifar_dir, tmp_path):
    code, out = run_cli("evaluate", tmp_path / "nope.pt", "--data", tiny_cifar_dir)
    assert code != 0 and "nope.pt does not exist" in out
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out = run_cli("evaluate", two_seeds[0], "--data", tiny_cifar_dir, "--out", blocker / "ev", "--device", "cpu")
    assert code != 0 and "cannot create output folder" in out
    code, out = run_cli("evaluate", tmp_path / "nope.pt", "--data", tmp_path)
    assert code != 0 and "not a prepared dataset" in out
    code, out = run_cli("evaluate", two_seeds[0], "--data", tmp_path)
    assert code != 0 and "not a prepared dataset" in out


def test_a_checkpoint_is_fed_its_own_preprocessing_and_other_data_are_named(two_seeds, tiny_cifar_dir, digits_dir,
                                                                            tmp_path):
    """On other data (digits) the model still sees inputs normalised as in its training, and the user is told the
    data differ; a checkpoint whose recorded mean/std were changed gives the metrics of those statistics."""
    body = torch.load(two_seeds[0], weights_only=True)
    shifted = tmp_path / "shifted" / "last.pt"
    shifted.parent.mkdir()
    stats = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.6, 0.7]}
    save_checkpoint(shifted, {k: v for k, v in body.items() if k not in ("format", "version")}
                    | {"dataset": {**body["dataset"], **stats}})
    result = CliRunner().invoke(main, ["evaluate", str(shifted), "--data", str(digits_dir), "--json",
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    run = json.loads(result.stdout)["runs"][0]
    data = open_dataset(digits_dir)
    model = create_model("resnet20", 10)
    model.load_state_dict(body["model"])
    loader = eval_loader(data, "test", torch.device("cpu"))
    expected = classification_metrics(*predict(model, loader, Normalizer(stats["mean"], stats["std"], "cpu")))
    with_data_stats = classification_metrics(*predict(model, loader, Normalizer(data.mean, data.std, "cpu")))
    assert run["nll"] == pytest.approx(expected["nll"], rel=1e-6) and run["nll"] != with_data_stats["nll"]
    assert "trained on cifar10" in run["note"] and "not on the evaluated digits" in run["note"]
    assert f"note: {shifted} was trained on cifar10" in result.stderr
    same = CliRunner().invoke(main, ["evaluate", str(two_seeds[0]), "--data", str(tiny_cifar_dir), "--json",
                                     "--device", "cpu"])
    assert "note" not in json.loads(same.stdout)["runs"][0] and "note:" not in same.stderr


def test_runs_whose_points_coincide_stay_visible_side_by_side(tmp_path):
    same = bins_of([0.95, 0.9, 0.5, 0.45], [1, 1, 0, 1])
    fig = reports.comparison_figure([("a", same), ("b", same)], "t")
    ax = fig.axes[0]
    first, second = ax.get_lines()[1:]
    assert first.get_linestyle() != second.get_linestyle()  # the line drawn last lets the first one's colour through
    points = ax.collections
    assert len(points) == 2
    for collection in points:  # hollow: a marker never covers another
        assert collection.get_facecolor().size == 0 or collection.get_facecolor()[:, 3].max() == 0
    assert points[0].get_paths()[0].vertices.tolist() != points[1].get_paths()[0].vertices.tolist()  # other shapes
    assert (points[1].get_sizes() > points[0].get_sizes()).all()  # the second run's markers round the first's
    reports.save_png(fig, tmp_path / "same.png")
    assert (tmp_path / "same.png").stat().st_size > 0
