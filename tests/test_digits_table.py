"""benchmarks/digits_table.sh: a thin wrapper over `labelopt table digits` (tests/test_tables.py tests the table
itself, its plan and, marked slow, its smoke end to end)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "digits_table.sh"


def script_env(home: Path, **extra) -> dict:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home), **extra}
    if "PYTHONPATH" in os.environ:  # a worktree's checkout of labelopt, as the caller sees it
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def test_the_wrapper_passes_rows_seeds_and_options_to_labelopt_table(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(SCRIPT), str(out), "--dry-run"], capture_output=True, text=True, timeout=120,
                         env=script_env(tmp_path, ROWS="vanilla sl-kd", SEEDS="3 4"))
    assert run.returncode == 0, run.stderr
    commands = [line.split() for line in run.stdout.splitlines()]
    assert all(c[0] == "[new]" and c[1] == "labelopt" for c in commands)
    assert [c[2] for c in commands] == ["prepare", "train", "train", "train", "generate-labels", "train-student"]
    pack = commands[-1]  # the two rows' seeds as one pack
    assert [pack[i + 1].split(",")[0] for i, a in enumerate(pack) if a == "--member"] == [
        "name=vanilla-seed-3", "name=vanilla-seed-4", "name=sl-kd-seed-3", "name=sl-kd-seed-4"]
    assert not out.exists()  # a dry run writes nothing


def test_the_wrapper_refuses_a_missing_out_and_a_bad_row(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, env=script_env(tmp_path))
    assert run.returncode == 2 and "digits_table.sh OUT" in run.stderr
    run = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), "--dry-run", "--rows", "nope"],
                         capture_output=True, text=True, timeout=120, env=script_env(tmp_path))
    assert run.returncode == 1 and "has no row 'nope'" in run.stderr and "Traceback" not in run.stderr
