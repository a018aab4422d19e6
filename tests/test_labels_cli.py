"""`labelopt labels inspect | verify | combine`: figures against a direct computation, exit codes, refusals."""
import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.datasets import open_dataset
from labelopt.store import LabelStore
from labelopt.tests.store_fakes import build, make_data, make_header, make_layout


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def expected_quality(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """The figures written out plainly: every (sample, view) row is one prediction of its sample's label."""
    n, v, c = probs.shape
    p = probs.reshape(n * v, c).astype(np.float64)
    y = np.repeat(labels, v)
    conf, pred = p.max(1), p.argmax(1)
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return {"top1": 100 * (pred == y).mean(), "mean_confidence": conf.mean(),
            "mean_entropy": -(p * np.log(p)).sum(1).mean(), "ece": ece}


def test_inspect_reports_provenance_shapes_and_label_quality(tmp_path):
    layout = make_layout(logits=True, features={"pool": 4})
    path, data = build(tmp_path / "s.h5", layout)
    result = run("labels", "inspect", path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    stored = data["targets"].astype(np.float16).astype(np.float32)  # what the file holds
    want = expected_quality(stored, data["labels"])
    for key, value in want.items():
        assert report["labels"][key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
    assert report["labels"]["rows"] == 10 * 3
    assert report["shapes"] == {"targets": [10, 3, 7], "logits": [10, 3, 7], "features/pool": [10, 3, 4],
                                "labels": [10]}
    assert report["signals"] == ["targets", "logits", "features:pool"]
    assert report["generator"]["teachers"][0]["arch"] == "resnet"
    assert report["size_bytes"] == path.stat().st_size

    text = run("labels", "inspect", path)
    assert text.exit_code == 0
    assert "top-1 vs ground truth" in text.output and "resnet" in text.output and "/targets [10, 3, 7]" in text.output


def test_inspect_topk_store_and_unlabelled_rows(tmp_path):
    layout = make_layout(topk=2)
    data = make_data(layout)
    data["labels"][:] = -1  # an unlabeled split: quality against ground truth does not exist
    path, _ = build(tmp_path / "k.h5", layout, data)
    report = json.loads(run("labels", "inspect", path, "--json").output)
    assert report["storage"] == "top-2" and report["shapes"]["topk/values"] == [10, 3, 2]
    assert report["labels"]["top1"] is None and report["labels"]["ece"] is None
    top2 = np.sort(data["targets"], -1)[..., -2:].astype(np.float16).astype(np.float64)
    assert report["labels"]["mean_confidence"] == pytest.approx(top2[..., -1].mean(), rel=1e-4)


def matching_store(tmp_path, data_dir):
    data = open_dataset(data_dir)
    identity = data.identity("train")
    header = make_header()
    header["dataset"] = {**identity, "class_names": data.class_names}
    path, _ = build(tmp_path / "m.h5", make_layout(num_samples=identity["num_samples"], num_classes=10), header=header)
    return path


def test_verify_passes_then_fails_on_a_flipped_byte(tmp_path, tiny_cifar_dir):
    path = matching_store(tmp_path, tiny_cifar_dir)
    ok = run("labels", "verify", path, "--data", tiny_cifar_dir)
    assert ok.exit_code == 0, ok.output
    assert "identity" in ok.output and "FAILED" not in ok.output
    with h5py.File(path, "r") as f:
        info = f["targets"].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + info.size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    bad = run("labels", "verify", path, "--json")
    assert bad.exit_code == 1
    line = one_line_error(bad)
    assert "chunks:targets" in line


def test_verify_with_other_data_fails_on_identity(tmp_path, tiny_cifar_dir):
    path, _ = build(tmp_path / "other.h5")  # made from a dataset called "tiny" with another fingerprint
    result = run("labels", "verify", path, "--data", tiny_cifar_dir, "--json")
    assert result.exit_code == 1
    checks = {c["name"]: c for c in json.loads(result.output.split("\nError:")[0])["checks"]}
    assert not checks["identity"]["ok"] and "fingerprint" in checks["identity"]["detail"]


def test_verify_of_a_missing_or_non_store_file(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    for target in (tmp_path / "missing.h5", tmp_path / "x.h5"):
        result = run("labels", "verify", target)
        assert result.exit_code == 1
        one_line_error(result)


def test_combine_from_the_command_line(tmp_path):
    layout = make_layout()
    a, da = build(tmp_path / "a.h5", layout, make_data(layout, seed=1))
    db = make_data(layout, seed=2)
    db["labels"] = da["labels"]
    b, _ = build(tmp_path / "b.h5", layout, db)
    result = run("labels", "combine", a, b, "--out", tmp_path / "ens.h5", "--weights", "1,3")
    assert result.exit_code == 0, result.output
    store = LabelStore.open(tmp_path / "ens.h5")
    assert store.generator["weights"] == [0.25, 0.75]
    want = 0.25 * da["targets"].astype(np.float16) + 0.75 * db["targets"].astype(np.float16)
    np.testing.assert_allclose(store.gather(np.arange(10).repeat(3), np.tile(np.arange(3), 10)).numpy(),
                               want.reshape(30, -1), atol=2e-3)
    again = run("labels", "combine", a, b, "--out", tmp_path / "ens.h5")
    assert "--overwrite" in one_line_error(again)


def test_combine_refuses_stores_of_other_data_and_writes_nothing(tmp_path):
    a, _ = build(tmp_path / "a.h5")
    b, _ = build(tmp_path / "b.h5", header=make_header(fingerprint="fp-other"))
    result = run("labels", "combine", a, b, "--out", tmp_path / "ens.h5")
    assert "fingerprint differs" in one_line_error(result)
    assert not (tmp_path / "ens.h5").exists() and not any(p.name.startswith(".ens") for p in tmp_path.iterdir())
    bad_weights = run("labels", "combine", a, b, "--out", tmp_path / "ens.h5", "--weights", "1,x")
    assert bad_weights.exit_code == 2 and "--weights" in bad_weights.output
