"""--compile: the step up to backward (normalisation, student, loss, the step's figures) through torch.compile
(inductor on the CPU here; CUDA graphs on a GPU) trains as the eager step does, one graph for a whole run (a pack's
too), the compile is reported once, and methods it cannot capture run eager."""
import json
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch._dynamo.utils import counters

from labelopt.cli import main
from labelopt.pipeline.data.datasets import open_dataset
from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels
from labelopt.pipeline.jobs.student import StudentOptions, train_student
from labelopt.pipeline.run.options import TrainOptions
from labelopt.pipeline.run.runtime import init_distributed
from labelopt.pipeline.run.train_loop import CompileClock
from labelopt.pipeline.run.train_setup import StepMode, compile_step
from labelopt.pipeline.run.training import cross_entropy_objective, fit


def small_net(classes: int) -> nn.Module:
    """Small enough that inductor compiles its forward and backward in seconds on 2 cores."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, classes))


def train_small(data_dir, out, compile_step: bool, lines: list):
    data = open_dataset(data_dir)
    options = TrainOptions(data=str(data_dir), arch="resnet20", out=str(out), epochs=2, batch_size=32, lr=0.05,
                           seed=0, device="cpu", augment="cifar-crop-flip", milestones=(), compile=compile_step)
    fit(options, data, small_net(data.num_classes), cross_entropy_objective(0.0), init_distributed("cpu"),
        torch.device("cpu"), command="train", log=lines.append)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return torch.load(out / "last.pt", weights_only=True)["model"], records


@pytest.mark.slow
def test_a_compiled_step_trains_as_the_eager_one_and_reports_its_compile_once(tiny_cifar_dir, tmp_path):
    eager_lines, compiled_lines = [], []
    eager, eager_records = train_small(tiny_cifar_dir, tmp_path / "eager", False, eager_lines)
    compiled, compiled_records = train_small(tiny_cifar_dir, tmp_path / "compiled", True, compiled_lines)
    worst = max(((eager[k].float() - compiled[k].float()).abs().max() / (eager[k].float().abs().max() + 1e-12))
                .item() for k in eager)
    assert worst < 1e-4, f"compiled weights differ from eager by {worst:.2e} (relative) after 6 steps"
    for a, b in zip(eager_records, compiled_records):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 * abs(a["train_loss"])
    assert "compile_seconds" in compiled_records[0] and compiled_records[0]["compile_seconds"] > 0
    assert all("compile_seconds" not in r for r in compiled_records[1:] + eager_records)
    assert "compiling the whole step took" in compiled_lines[0] and "compiling" not in compiled_lines[1]
    assert compiled_records[0]["compiled"] == "the whole step"  # no CUDA graphs on a CPU


def test_a_method_that_taps_the_student_runs_eager_under_compile_and_says_so():
    lines = []
    options = TrainOptions(data="-", arch="resnet20", out="-", compile=True)
    model, normalize = nn.Linear(2, 2), lambda images: images
    objective = lambda net, inputs, batch, extra: (net(inputs).sum(), None, {})  # noqa: E731
    cpu, one_process = torch.device("cpu"), init_distributed("cpu")
    _, mode = compile_step(options, objective, normalize, model, None, "eager", one_process, cpu, lines.append)
    assert not mode.compiled and len(lines) == 1 and "trains eager" in lines[0]
    for scope in ("step", "student"):
        _, mode = compile_step(options, objective, normalize, model, None, scope, one_process, cpu, lines.append)
        assert mode.compiled and mode.scope == scope and not mode.graphs and len(lines) == 1  # no graphs on a CPU


def test_methods_lists_what_compile_does_for_each():
    result = CliRunner().invoke(main, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    modes = {row["method"]: row["compile"] for row in json.loads(result.output)}
    assert modes["sl"] == modes["kd"] == modes["vanilla"] == "CUDA graphs"
    assert modes["fitnet"] == modes["crd"] == modes["kdss"] == "eager (hooks)"


@pytest.fixture(scope="module")
def identity_store(tiny_teacher, tiny_cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("compile-store") / "identity.h5"
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(out), teachers=(str(tiny_teacher),),
                                    views="identity", temperature=4.0, device="cpu"), log=lambda _: None)
    return out


@pytest.mark.slow
def test_a_compiled_pack_from_a_store_is_one_graph_and_trains_as_the_eager_pack(tiny_cifar_dir, identity_store,
                                                                                 tmp_path):
    """Two members' store rows, their losses and the student in one graph (the whole step), compiled once for the
    whole run: the epoch that changes at each epoch's start is not read inside it."""
    def pack(out, compile_step_too):
        lines = []
        # A small lr: sl scales its loss by T^2 = 16, and at 0.05 six steps of resnet20 amplify the rounding.
        train_student(StudentOptions(data=str(tiny_cifar_dir), arch="resnet20", out=str(out), epochs=2,
                                     batch_size=32, device="cpu", method="sl", labels=str(identity_store),
                                     seeds=(1, 2), lr=0.002, compile=compile_step_too), log=lines.append)
        return lines
    pack(tmp_path / "eager", False)
    torch._dynamo.reset()
    counters.clear()
    lines = pack(tmp_path / "compiled", True)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])  # no graph break, no recompile
    assert "compiling the whole step took" in lines[0] and all("compiling" not in line for line in lines[1:])
    for seed in (1, 2):
        eager = torch.load(tmp_path / "eager" / f"seed-{seed}" / "last.pt", weights_only=True)["model"]
        compiled = torch.load(tmp_path / "compiled" / f"seed-{seed}" / "last.pt", weights_only=True)["model"]
        # One norm over every weight: a BatchNorm bias starts at 0, so its own relative rounding error is large.
        floats = [k for k in eager if eager[k].is_floating_point()]
        gap = sum(((eager[k] - compiled[k]) ** 2).sum() for k in floats).sqrt()
        relative = (gap / sum((eager[k] ** 2).sum() for k in floats).sqrt()).item()
        assert relative < 1e-5, f"member seed-{seed}: compiled weights differ from eager by {relative:.2e} (relative)"


def test_a_step_whose_cuda_graphs_torch_skipped_says_so_and_runs_without_them():
    """torch runs a graph without CUDA graphs (with a warning) when, e.g., a CPU tensor reached it: the run then
    stops marking graph steps and its record says so, instead of claiming graphs it did not get."""
    def first_step(skipped: bool):
        mode = StepMode(graphs=True, compile_pending=True, scope="step")
        clock = CompileClock(SimpleNamespace(step_mode=mode, device=torch.device("cpu")))
        clock.start()
        if skipped:
            counters["inductor"]["cudagraph_skips"] += 1  # what inductor does as it skips them
        clock.stop(rows=8)
        return mode, clock

    mode, clock = first_step(skipped=False)
    assert mode.graphs and not mode.compile_pending and clock.describe() == "the whole step in CUDA graphs"
    mode, clock = first_step(skipped=True)
    assert not mode.graphs and clock.rows == 8 and "without the CUDA graphs torch skipped" in clock.describe()
