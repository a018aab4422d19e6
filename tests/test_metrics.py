"""Metrics against cases worked out by hand; the plot and table are checked for shape."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labelopt.pipeline.jobs.reports import format_table, plot_reliability
from labelopt.stages.metrics import (
    CalibrationBins,
    calibration_bins,
    classification_metrics,
    mean_std,
    summarize_runs,
)

# Hand case: 4 samples x 3 classes.  Confidences 0.70, 0.55, 0.58, 0.90 sit away
# from every edge of both the 15-bin (k/15) and the 2-bin (0.5) grids.
#   s0 [0.70 0.20 0.10] label 0 -> pred 0 correct, conf 0.70, p_label 0.70
#   s1 [0.30 0.55 0.15] label 0 -> pred 1 wrong,   conf 0.55, p_label 0.30
#   s2 [0.12 0.30 0.58] label 2 -> pred 2 correct, conf 0.58, p_label 0.58
#   s3 [0.05 0.90 0.05] label 1 -> pred 1 correct, conf 0.90, p_label 0.90
PROBS = torch.tensor(
    [
        [0.70, 0.20, 0.10],
        [0.30, 0.55, 0.15],
        [0.12, 0.30, 0.58],
        [0.05, 0.90, 0.05],
    ],
    dtype=torch.float64,
)
LABELS = torch.tensor([0, 0, 2, 1], dtype=torch.int64)
# Rows sum to 1, so softmax(log p) == p: these logits reproduce PROBS.
LOGITS = PROBS.log()


def test_top1_and_top5_with_fewer_than_five_classes():
    m = classification_metrics(LOGITS, LABELS)
    # 3 of 4 correct (s1 wrong).
    assert m["top1"] == pytest.approx(75.0)
    # C = 3 < 5, so top5 is top-3 accuracy, which always hits.
    assert m["top5"] == pytest.approx(100.0)
    assert m["num_samples"] == 4


def test_top5_with_more_than_five_classes():
    # C = 7, logits decreasing with the class index: class j has rank j (0 = best).
    row = torch.tensor([7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    logits = row.repeat(3, 1)
    # label 0 -> rank 0: top1 and top5 hit
    # label 4 -> rank 4: top5 hit (5th best), top1 miss
    # label 5 -> rank 5: both miss
    labels = torch.tensor([0, 4, 5])
    m = classification_metrics(logits, labels)
    assert m["top1"] == pytest.approx(100.0 / 3)  # 1 of 3
    assert m["top5"] == pytest.approx(200.0 / 3)  # 2 of 3


def test_top5_with_four_classes_is_top4():
    # C = 4: top-min(5, 4) = top-4 covers every class.
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    labels = torch.tensor([3, 0])  # both ranked last
    m = classification_metrics(logits, labels)
    assert m["top1"] == pytest.approx(0.0)
    assert m["top5"] == pytest.approx(100.0)


def test_nll_is_mean_negative_log_of_label_probability():
    # -(ln 0.70 + ln 0.30 + ln 0.58 + ln 0.90) / 4
    # = (0.356674944 + 1.203972804 + 0.544727175 + 0.105360516) / 4
    # = 2.210735439 / 4 = 0.552683860
    m = classification_metrics(LOGITS, LABELS)
    assert m["nll"] == pytest.approx(0.552683860, abs=1e-8)


def test_ece_fifteen_bins_by_hand():
    # Edges k/15: bin 8 = (0.5333, 0.6], bin 10 = (0.6667, 0.7333], bin 13 = (0.8667, 0.9333].
    #   bin 8:  s1 (0.55, wrong), s2 (0.58, right) -> n=2, conf 0.565, acc 0.5, gap 0.065
    #   bin 10: s0 (0.70, right)                   -> n=1, conf 0.70,  acc 1.0, gap 0.30
    #   bin 13: s3 (0.90, right)                   -> n=1, conf 0.90,  acc 1.0, gap 0.10
    # ECE = 2/4 * 0.065 + 1/4 * 0.30 + 1/4 * 0.10 = 0.0325 + 0.075 + 0.025 = 0.1325
    b = calibration_bins(PROBS, LABELS, n_bins=15)
    assert b.edges.shape == (16,)
    expected_counts = np.zeros(15, dtype=np.int64)
    expected_counts[[8, 10, 13]] = [2, 1, 1]
    np.testing.assert_array_equal(b.counts, expected_counts)
    assert b.confidence[8] == pytest.approx(0.565)
    assert b.accuracy[8] == pytest.approx(0.5)
    assert b.confidence[10] == pytest.approx(0.70)
    assert b.accuracy[10] == pytest.approx(1.0)
    assert b.confidence[13] == pytest.approx(0.90)
    assert b.accuracy[13] == pytest.approx(1.0)
    assert b.ece() == pytest.approx(0.1325)
    # classification_metrics reports the same ECE from the logits.
    assert classification_metrics(LOGITS, LABELS, n_bins=15)["ece"] == pytest.approx(0.1325)


def test_ece_two_bins_by_hand():
    # Edges 0, 0.5, 1: all four confidences are > 0.5, so everything is in bin 1.
    #   conf = (0.70 + 0.55 + 0.58 + 0.90) / 4 = 2.73 / 4 = 0.6825, acc = 3/4 = 0.75
    # ECE = |0.75 - 0.6825| = 0.0675; bin 0 is empty.
    b = calibration_bins(PROBS, LABELS, n_bins=2)
    np.testing.assert_allclose(b.edges, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(b.counts, [0, 4])
    assert b.confidence[1] == pytest.approx(0.6825)
    assert b.accuracy[1] == pytest.approx(0.75)
    assert b.ece() == pytest.approx(0.0675)
    assert classification_metrics(LOGITS, LABELS, n_bins=2)["ece"] == pytest.approx(0.0675)


def test_ece_two_bins_both_filled():
    # Two low-confidence samples in bin 0 (<= 0.5) and two high ones in bin 1:
    #   a [0.40 0.35 0.25] label 0 -> conf 0.40 right  (bin 0)
    #   b [0.20 0.35 0.45] label 0 -> conf 0.45 wrong  (bin 0)
    #   c [0.80 0.10 0.10] label 0 -> conf 0.80 right  (bin 1)
    #   d [0.10 0.60 0.30] label 2 -> conf 0.60 wrong  (bin 1)
    # bin 0: conf (0.40+0.45)/2 = 0.425, acc 0.5 -> gap 0.075
    # bin 1: conf (0.80+0.60)/2 = 0.70,  acc 0.5 -> gap 0.20
    # ECE = 2/4 * 0.075 + 2/4 * 0.20 = 0.0375 + 0.10 = 0.1375
    probs = torch.tensor([[0.40, 0.35, 0.25], [0.20, 0.35, 0.45], [0.80, 0.10, 0.10], [0.10, 0.60, 0.30]])
    labels = torch.tensor([0, 0, 0, 2])
    b = calibration_bins(probs, labels, n_bins=2)
    np.testing.assert_array_equal(b.counts, [2, 2])
    np.testing.assert_allclose(b.confidence, [0.425, 0.70])
    np.testing.assert_allclose(b.accuracy, [0.5, 0.5])
    assert b.ece() == pytest.approx(0.1375)


def test_bin_edge_convention():
    # Bins are closed on the right: c == 1.0 goes to the last bin, c on an
    # interior edge goes to the lower bin, c == 0 goes to bin 0.
    probs = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # conf 1.0 -> bin 1 (last)
            [0.5, 0.5, 0.0],  # conf 0.5 == interior edge -> bin 0 (argmax picks class 0)
            [0.0, 0.0, 0.0],  # conf 0.0 -> bin 0
        ],
        dtype=torch.float64,
    )
    labels = torch.tensor([0, 1, 0])
    b = calibration_bins(probs, labels, n_bins=2)
    np.testing.assert_array_equal(b.counts, [2, 1])
    assert b.confidence[1] == 1.0 and b.accuracy[1] == 1.0
    # bin 0: confs 0.5 and 0.0, correctness wrong (pred 0, label 1) and right.
    assert b.confidence[0] == pytest.approx(0.25)
    assert b.accuracy[0] == pytest.approx(0.5)

    # Same with 15 bins, using the stored edge values themselves.
    edges = calibration_bins(probs, labels, n_bins=15).edges
    on_edge = float(edges[9])  # boundary between bins 8 and 9
    probs15 = torch.tensor([[on_edge, 1.0 - on_edge], [1.0, 0.0]], dtype=torch.float64)
    b15 = calibration_bins(probs15, torch.tensor([0, 0]), n_bins=15)
    assert b15.counts[8] == 1 and b15.counts[9] == 0
    assert b15.counts[14] == 1


def test_empty_bins_are_nan_and_do_not_count():
    b = calibration_bins(PROBS, LABELS, n_bins=15)
    empty = b.counts == 0
    assert empty.sum() == 12
    assert np.all(np.isnan(b.confidence[empty]))
    assert np.all(np.isnan(b.accuracy[empty]))
    assert not math.isnan(b.ece())
    assert b.counts.dtype.kind == "i"


def test_ece_of_hand_built_bins():
    # ECE depends only on counts and the per-bin gaps; empty bins (nan) weigh 0.
    b = CalibrationBins(
        edges=np.array([0.0, 0.5, 1.0]),
        counts=np.array([0, 10]),
        confidence=np.array([np.nan, 0.9]),
        accuracy=np.array([np.nan, 0.6]),
    )
    assert b.ece() == pytest.approx(0.3)


def test_bf16_and_half_logits_accepted():
    # All values are exact in bf16/fp16, so the float64 results must match float32.
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.25, 3.0, -1.0], [1.5, 1.0, 4.0]])
    labels = torch.tensor([0, 2, 2])
    ref = classification_metrics(logits, labels)
    for dtype in (torch.bfloat16, torch.float16):
        m = classification_metrics(logits.to(dtype), labels)
        for key in ("top1", "top5", "nll", "ece"):
            assert m[key] == pytest.approx(ref[key], abs=1e-12), (dtype, key)
    # Sample 0 logits (2, 1, 0.5), label 0: nll_0 = log(e^2 + e^1 + e^0.5) - 2.
    lse0 = math.log(math.exp(2.0) + math.exp(1.0) + math.exp(0.5))
    lse1 = math.log(math.exp(0.25) + math.exp(3.0) + math.exp(-1.0))
    lse2 = math.log(math.exp(1.5) + math.exp(1.0) + math.exp(4.0))
    expected = ((lse0 - 2.0) + (lse1 + 1.0) + (lse2 - 4.0)) / 3
    assert ref["nll"] == pytest.approx(expected, abs=1e-12)
    assert calibration_bins(torch.softmax(logits, 1).to(torch.bfloat16), labels).num_samples == 3


def test_bad_inputs_rejected():
    with pytest.raises(ValueError):
        classification_metrics(LOGITS, torch.tensor([0, 1, 3, 0]))  # label out of range
    with pytest.raises(ValueError):
        classification_metrics(LOGITS, LABELS[:3])  # length mismatch
    with pytest.raises(TypeError):
        classification_metrics(LOGITS, LABELS.double())
    with pytest.raises(ValueError):
        calibration_bins(PROBS, LABELS, n_bins=0)
    with pytest.raises(ValueError):
        classification_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))


def test_mean_std_one_and_three_values():
    assert mean_std([69.17]) == (69.17, 0.0)
    # [1, 2, 3]: mean 2, squared deviations 1 + 0 + 1 = 2, / (3 - 1) = 1 -> std 1
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_summarize_runs_one_and_three_runs():
    one = summarize_runs([{"top1": 70.0, "top5": 90.0, "nll": 1.2, "ece": 0.02}])
    assert one["top1"] == {"mean": 70.0, "std": 0.0, "values": [70.0]}
    assert set(one) == {"top1", "top5", "nll", "ece"}

    runs = [
        {"top1": 69.0, "top5": 89.0, "nll": 1.0, "ece": 0.01},
        {"top1": 70.0, "top5": 90.0, "nll": 1.1, "ece": 0.02},
        {"top1": 71.0, "top5": 91.0, "nll": 1.2, "ece": 0.03},
    ]
    s = summarize_runs(runs)
    # Each key steps evenly by d, so mean = middle value and std = d
    # (deviations -d, 0, d -> 2 d^2 / 2 = d^2).
    assert s["top1"]["mean"] == pytest.approx(70.0) and s["top1"]["std"] == pytest.approx(1.0)
    assert s["nll"]["mean"] == pytest.approx(1.1) and s["nll"]["std"] == pytest.approx(0.1)
    assert s["ece"]["mean"] == pytest.approx(0.02) and s["ece"]["std"] == pytest.approx(0.01)
    assert s["top5"]["values"] == [89.0, 90.0, 91.0]
    assert set(summarize_runs(runs, keys=("nll",))) == {"nll"}
    with pytest.raises(KeyError):
        summarize_runs([{"top1": 1.0}], keys=("top1", "nll"))
    with pytest.raises(ValueError):
        summarize_runs([])


def test_plot_reliability_writes_png_atomically(tmp_path):
    b = calibration_bins(PROBS, LABELS, n_bins=15)
    out = tmp_path / "sub" / "reliability.png"
    plot_reliability(b, out, "hand case")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000
    # Only the final file remains: no temporary sibling left behind.
    assert [p.name for p in out.parent.iterdir()] == ["reliability.png"]


def test_format_table_alignment_and_mean_std():
    rows = [
        {"name": "baseline", "top1": {"mean": 69.1734, "std": 0.0512}, "ece": 0.02134, "n": 50000},
        {"name": "soft labels", "top1": {"mean": 70.5, "std": 0.1}, "ece": 0.0187},
    ]
    cols = [("name", "method"), ("top1", "top-1 (%)"), ("ece", "ECE"), ("n", "N")]
    text = format_table(rows, cols)
    lines = text.split("\n")
    assert len(lines) == 4
    # Every line has the same width, so columns line up.
    assert len({len(line) for line in lines}) == 1
    assert "69.17 ± 0.05" in lines[2]
    assert "70.50 ± 0.10" in lines[3]
    assert "0.0213" in lines[2] and "0.0187" in lines[3]
    # Missing value rendered as "-", right-aligned in the numeric column.
    assert lines[3].endswith("  -")
    assert lines[2].endswith("50000")
    # Text column left-aligned, numeric columns right-aligned: the "±" signs line up.
    assert lines[2].startswith("baseline ")
    assert lines[2].index("±") == lines[3].index("±")
    assert set(lines[1]) <= {"-", " "}


def test_format_table_float_rules():
    rows = [{"a": 69.1666, "b": 0.00002, "c": None, "d": float("nan"), "e": 0.0}]
    text = format_table(rows, [("a", "a"), ("b", "b"), ("c", "c"), ("d", "d"), ("e", "e")])
    body = text.split("\n")[2].split()
    assert body == ["69.17", "2.00e-05", "-", "nan", "0.00"]
