"""`labelopt labels inspect | verify | combine`: figures against a direct computation, exit codes, refusals."""
import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.data.datasets import open_dataset
from labelopt.store import LabelStore, verify
from labelopt.tests.store_fakes import build, forge, make_data, make_header, make_layout


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
    # as docs/label-store.md has it: [N, V] entries, each K class ids and K values
    assert report["storage"] == "top-2" and report["shapes"]["topk/entries"] == [10, 3]
    text = run("labels", "inspect", path).output
    assert "/topk/entries [10, 3] of {index: int32[2], value: float16[2]}" in text
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


# -- verify --teacher --sample: re-label random rows -------------------------------------------------

def untrained_teacher(path):
    from labelopt.models import create_model
    from labelopt.pipeline.run.checkpoints import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(path, {"arch": "resnet20", "num_classes": 10, "model": create_model("resnet20", 10).state_dict()})
    return path


def test_verify_refuses_a_teacher_the_store_does_not_name(tmp_path, tiny_cifar_dir):
    path = matching_store(tmp_path, tiny_cifar_dir)  # its record names a checkpoint with sha256 "00"
    teacher = untrained_teacher(tmp_path / "t.pt")
    line = one_line_error(run("labels", "verify", path, "--data", tiny_cifar_dir, "--teacher", teacher))
    assert "is not the one store" in line and str(teacher) in line and "pass that checkpoint" in line
    no_data = one_line_error(run("labels", "verify", path, "--teacher", teacher))
    assert "pass --data" in no_data
    bad_sample = one_line_error(run("labels", "verify", path, "--data", tiny_cifar_dir, "--sample", "0"))
    assert "'--sample': '0' is out of range" in bad_sample


@pytest.mark.parametrize("topk", [None, 3])
def test_relabel_comparison_passes_the_truth_and_catches_other_values(tmp_path, topk):
    from labelopt.pipeline.jobs.store_relabel import ATOL, RTOL, compare_rows

    layout = make_layout(topk=topk, logits=topk is None)
    path, data = build(tmp_path / "s.h5", layout)
    store = LabelStore.open(path)
    rows = np.array([0, 3, 3, 9])
    views = np.array([2, 0, 1, 2])
    probs, logits = data["targets"][rows, views], None if topk else data["logits"][rows, views]
    honest = compare_rows(store, rows, views, probs, logits)
    assert all(r["ok"] for r in honest), honest
    stored = data["targets"].astype(np.float16).astype(np.float64)[rows, views]
    if topk:  # only the kept classes are compared
        kept = -np.sort(-stored, axis=1)[:, :topk]
        want = np.abs(kept - -np.sort(-probs.astype(np.float64), axis=1)[:, :topk]).max(1)
    else:
        want = np.abs(stored - probs).max(1)
    np.testing.assert_allclose([r["max_abs_diff"] for r in honest], want, rtol=1e-5, atol=1e-9)
    assert max(want) <= ATOL + RTOL  # float16 rounding of a probability stays inside the tolerance

    shifted = probs.copy()
    shifted[1] = np.roll(shifted[1], 1)  # row 1 is another distribution
    result = compare_rows(store, rows, views, shifted, logits)
    assert [r["ok"] for r in result] == [True, False, True, True]
    if topk:
        boosted = probs.copy()
        left_out = np.argsort(probs[2])[0]  # the smallest class, never stored
        boosted[2, left_out] = probs[2].max() * 2  # the teacher would have kept it
        result = compare_rows(store, rows, views, boosted, None)
        assert [r["topk_classes_ok"] for r in result] == [True, True, False, True]
    else:
        result = compare_rows(store, rows, views, probs, logits + np.array([0, 0, 0.1, 0])[:, None])
        assert [r["ok"] for r in result] == [True, True, False, True]
        assert result[2]["logits_max_abs_diff"] == pytest.approx(0.1, abs=0.01)


@pytest.mark.slow
def test_verify_relabels_an_honest_store_and_catches_a_forged_one(tmp_path, tiny_cifar_dir):
    from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels

    teacher = untrained_teacher(tmp_path / "t.pt")
    path = tmp_path / "s.h5"
    # Sampled views: per-sample parameters that re-labelling must regenerate exactly as stage one drew them.
    generate_labels(GenerateOptions(data=str(tiny_cifar_dir), out=str(path), teachers=(str(teacher),), split="test",
                                    views="sampled:2", temperature=4.0, logits=True, seed=3, device="cpu",
                                    block_rows=16), log=lambda m: None)
    args = ("labels", "verify", path, "--data", tiny_cifar_dir, "--teacher", teacher, "--sample", 30, "--device", "cpu")
    honest = run(*args, "--json")
    assert honest.exit_code == 0, honest.output
    report = json.loads(honest.output)
    assert {c["name"]: c["ok"] for c in report["checks"]}.items() >= {
        "teacher": True, "views": True, "ground truth": True, "relabel": True}.items()
    rows = report["relabel"]["rows"]
    assert len(rows) == 30 == len({(r["index"], r["view"]) for r in rows}) and all(r["ok"] for r in rows)
    assert report["relabel"]["max_abs_diff"] < 2 ** -10

    def other_values(f):
        rng = np.random.default_rng(0)
        z = rng.normal(size=f["targets"].shape) * 2
        f["targets"][...] = (np.exp(z) / np.exp(z).sum(-1, keepdims=True)).astype(np.float16)

    forge(path, other_values)  # a consistent store: checksums and digest recomputed
    assert verify(path)["ok"]
    forged = run(*args)
    line = one_line_error(forged)
    assert "relabel" in line
    assert "FAILED" in forged.output and "largest differences" in forged.output


def test_ensemble_teachers_are_matched_by_sha256_in_the_stores_order(tmp_path):
    import hashlib

    from labelopt.pipeline.errors import UserError
    from labelopt.pipeline.jobs.store_relabel import ordered_teachers

    a, b, c = (tmp_path / f"{n}.pt" for n in "abc")
    for i, path in enumerate((a, b, c)):
        path.write_bytes(bytes([i]) * 10)
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    header = make_header()
    header["generator"]["teachers"] = [{"arch": "resnet", "checkpoint_sha256": sha(p)} for p in (a, b)]
    store = LabelStore.open(build(tmp_path / "ens.h5", header=header)[0])
    assert ordered_teachers(store, (str(b), str(a))) == [str(a), str(b)]
    for given, words in (((str(a),), "2 teacher checkpoint(s) and 1 were given"),
                         ((str(a), str(b), str(a)), "and 3 were given"),
                         ((str(a), str(c)), f"{c} (sha256 {sha(c)[:12]}) is not the one")):
        with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
            ordered_teachers(store, given)
