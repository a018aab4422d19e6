"""The command line as a user meets it: entry points, listings, help."""
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from labelopt.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_models_json_lists_every_architecture_with_parameters():
    result = CliRunner().invoke(main, ["models", "--json", "--classes", "10"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
                         "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
    assert rows["resnet20"]["parameters"] == 272474 and "stage3.pre" in rows["resnet20"]["taps"]


def test_python_cli_py_from_the_repository_root_and_console_script():
    by_file = subprocess.run([sys.executable, "cli.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert by_file.returncode == 0 and "prepare" in by_file.stdout and "evaluate" in by_file.stdout
    console = Path(sys.executable).parent / "labelopt"
    by_script = subprocess.run([str(console), "--version"], capture_output=True, text=True)
    assert by_script.returncode == 0 and "0.1.0" in by_script.stdout


def test_unknown_command_and_missing_option_exit_non_zero():
    runner = CliRunner()
    assert runner.invoke(main, ["frobnicate"]).exit_code != 0
    result = runner.invoke(main, ["train", "--arch", "resnet20"])
    assert result.exit_code != 0 and "Missing option '--data'" in result.output


def test_methods_lists_every_method_with_its_signals_and_defaults():
    result = CliRunner().invoke(main, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in json.loads(result.output)}
    assert {"vanilla", "ls", "sl", "sl-kd", "kd"} <= set(rows)
    baselines = {"kd", "fitnet", "at", "sp", "vid", "rkd", "pkt", "ab", "ft", "crd", "kdss"}  # the seed's 11
    assert baselines | {"crd+kd"} <= set(rows)
    assert {m for m in rows if rows[m]["source"] == "online (--teacher)"} == {"fitnet", "at", "sp", "vid", "ab", "ft",
                                                                             "kdss"}
    assert {m for m in rows if rows[m]["mix"] != "-"} == {"vanilla", "aug-sl", "aug-sl-kd"}
    assert rows["aug-sl"]["mix"] == "--mix required" and rows["vanilla"]["mix"] == "--mix optional"
    assert rows["kd"]["teacher_signals"] == ["logits"] and rows["kd"]["defaults"]["temperature"] == 4.0
    assert rows["sl"]["source"] == "store or online" and rows["vanilla"]["source"] == "none"
    table = CliRunner().invoke(main, ["methods"])
    assert table.exit_code == 0 and "sl-kd" in table.output
