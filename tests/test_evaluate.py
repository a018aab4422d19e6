"""labelopt evaluate: metrics from checkpoints, mean ± std over seeds, reliability PNGs, refusals."""
import json
import pickle

import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.models import create_model
from labelopt.pipeline.checkpoints import save_checkpoint
from labelopt.pipeline.datasets import open_dataset
from labelopt.pipeline.evaluation import eval_loader, predict
from labelopt.pipeline.training import TrainOptions, train
from labelopt.pipeline.views import Normalizer
from labelopt.stages.metrics import classification_metrics


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def two_seeds(tiny_cifar_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-runs")
    for seed in (0, 1):
        train(TrainOptions(data=str(tiny_cifar_dir), arch="resnet20", out=str(root / f"s{seed}"), epochs=1,
                           batch_size=32, seed=seed, device="cpu"), log=lambda m: None)
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


def test_several_checkpoints_give_mean_std_table_and_pngs(two_seeds, tiny_cifar_dir, tmp_path):
    code, out = run_cli("evaluate", *two_seeds, "--data", tiny_cifar_dir, "--out", tmp_path / "ev", "--device", "cpu")
    assert code == 0, out
    assert "mean ± std (2)" in out and "top-1 %" in out
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    values = [r["top1"] for r in saved["runs"]]
    assert saved["summary"]["top1"]["mean"] == pytest.approx(sum(values) / 2)
    for i in range(2):
        assert (tmp_path / "ev" / f"reliability-{i}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
