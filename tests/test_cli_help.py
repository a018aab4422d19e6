"""--help, --version and a refused option answer without importing torch (each in a fresh process), so they are
instant; the names they list come from torch-free modules that must match the registries themselves."""
import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "h5py", "ffcv")


def heavy_imports_of(code: str) -> dict:
    """Run `code` in a fresh interpreter, then report which heavy modules it imported (and its printed JSON)."""
    script = (f"import json, sys\n{code}\n"
              f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_train_student_help_imports_no_torch():
    code = ("from labelopt.cli import main\nsys.argv = ['labelopt', 'train-student', '--help']\n"
            "try:\n    main()\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code")
    assert heavy_imports_of(code) == []


def test_every_help_the_version_and_refused_options_import_no_torch():
    code = """
import click
from click.testing import CliRunner
from labelopt.cli import main

paths = [()] + [(name,) for name in main.commands]
paths += [("labels", sub) for sub in main.commands["labels"].commands]
runner = CliRunner()
for path in paths:
    result = runner.invoke(main, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output, (path, result.output)
assert runner.invoke(main, ["--version"]).exit_code == 0
refused = [["train-student", "--student", "nope", "--data", "d", "--out", "o"],
           ["train-student", "--student", "resnet20", "--method", "nope", "--data", "d", "--out", "o"],
           ["train", "--arch", "resnet20", "--data", "d", "--out", "o", "--epochs", "0"],
           ["train", "--arch", "resnet20", "--data", "d", "--out", "o", "--augment", "nope"],
           ["train", "--arch", "resnet20", "--data", "d", "--out", "o", "--resolution", "3"],
           ["generate-labels", "--data", "d", "--out", "s.h5", "--views", "nope"],
           ["generate-labels", "--data", "d", "--out", "s.h5", "--method", "nope"],
           ["train-student", "--student", "resnet20", "--data", "d", "--out", "o", "--mix", "nope"],
           ["train-student", "--student", "resnet20", "--out", "o"]]
for args in refused:
    result = runner.invoke(main, args)
    assert result.exit_code == 2, (args, result.exit_code, result.output)
"""
    assert heavy_imports_of(code) == []


def test_the_torch_free_names_are_the_registries_names():
    from labelopt.models import model_names
    from labelopt.models.registry import _REGISTRY
    from labelopt.pipeline.views.mixes import mix_policy_names
    from labelopt.pipeline.views.names import MIX_POLICY_NAMES, STORE_VIEW_SPECS, VIEW_POLICY_NAMES
    from labelopt.pipeline.views.policies import view_policy_names
    from labelopt.pipeline.views.store_sets import store_view_specs
    from labelopt.stages.distillers.registry import DISTILLERS
    from labelopt.stages.labelers import LABELERS
    from labelopt.stages.names import LABELER_NAMES, METHOD_NAMES

    assert model_names() == list(_REGISTRY)
    assert [name for name in DISTILLERS if name in METHOD_NAMES] == list(METHOD_NAMES)  # a test may add a fake
    assert tuple(LABELERS) == LABELER_NAMES
    assert (list(VIEW_POLICY_NAMES), list(MIX_POLICY_NAMES), list(STORE_VIEW_SPECS)) == (
        view_policy_names(), mix_policy_names(), store_view_specs())


@pytest.mark.slow
def test_the_help_benchmark_times_every_command_and_finds_no_heavy_import():
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "cli_help.py"
    done = subprocess.run([sys.executable, str(script), "--reps", "1", "--json-only"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    commands = [row["command"] for row in result["commands"]]
    assert "labelopt train-student --help" in commands and "labelopt labels repack --help" in commands
    assert all(row["imports"] == [] and row["median_s"] > 0 for row in result["commands"])
    assert result["machine"]["cpu_count"] >= 1
