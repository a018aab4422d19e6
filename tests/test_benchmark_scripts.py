"""The benchmark scripts CI can run: the CIFAR-100 method table in --smoke mode (every method, one epoch, digits)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_cifar100_table_smoke_runs_every_method(tmp_path):
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "cifar100_table.sh"), "--smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=1500, env={"PATH": env_path, "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-3000:]
    methods = json.loads(subprocess.run([str(Path(sys.executable).with_name("labelopt")), "methods", "--json"],
                                        capture_output=True, text=True, check=True).stdout)
    distillers = [m["method"] for m in methods if m["teacher_signals"] and m["method"] not in ("sl", "sl-kd")]
    rows = [line.split() for line in run.stdout.splitlines()]
    for method in distillers + ["vanilla", "teacher"]:
        assert any(method in row for row in rows), method
    for method in distillers:
        assert (tmp_path / "runs" / f"resnet20-{method}-from-resnet20" / "last.pt").is_file(), method
