"""Shared by tests that train a run: `evaluate` of its last.pt reproduces what the run logged for its last epoch."""
import json
from pathlib import Path

import pytest

from labelopt.pipeline.jobs.evaluation import evaluate_checkpoints


def assert_last_checkpoint_matches_log(run: Path, data: Path) -> dict:
    """last.pt, evaluated afresh, is the model the run scored after its last epoch: the same epochs done and the
    same test top-1, top-5, NLL and ECE as metrics.jsonl's last line (one model, one loader order, one CPU)."""
    logged = json.loads((Path(run) / "metrics.jsonl").read_text().splitlines()[-1])
    evaluated = evaluate_checkpoints([str(Path(run) / "last.pt")], str(data), device="cpu")["runs"][0]
    # Plain asserts with their own message: this helper module is not rewritten by pytest.
    pairs = {"epochs done": (evaluated["epoch"], logged["epoch"] + 1), "top1": (evaluated["top1"], logged["test_top1"]),
             "top5": (evaluated["top5"], logged["test_top5"])}
    for what, (got, want) in pairs.items():
        assert got == want, f"{run}/last.pt: evaluate gives {what} {got}, metrics.jsonl {want}"
    for key in ("nll", "ece"):
        assert evaluated[key] == pytest.approx(logged[f"test_{key}"], rel=1e-6, abs=1e-9), \
            f"{run}/last.pt: evaluate gives {key} {evaluated[key]}, metrics.jsonl {logged[f'test_{key}']}"
    return evaluated
