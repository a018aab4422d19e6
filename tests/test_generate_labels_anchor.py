"""benchmarks/generate_labels.py's anchor: the same teacher over the split's images already on the device, views
applied there, that generate-labels is measured against. Here eager on the CPU over a few images: it reads the
prepared split, reports a speed, and its logits are the teacher's own for the same (image, view) pairs. The captured
(CUDA graphs) variant needs a GPU and runs in device_check.sh."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def load_generate_labels():
    spec = importlib.util.spec_from_file_location("generate_labels_bench", REPO / "benchmarks" / "generate_labels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_generate_labels()


def teacher_and_views(data_dir, checkpoint, spec: str):
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.run.checkpoints import load_teachers
    from labelopt.pipeline.views.store_sets import store_views

    data = open_dataset(data_dir)
    return load_teachers([checkpoint], data, torch.device("cpu"))[0], store_views(spec, data, seed=0)


def own_logits(teacher, views, images: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """The teacher's logits for flat (image, view) pair ids, through generate-labels' view space: each row's
    parameters from views_of, its pixels from ViewSpace.pixels, then Teacher.outputs (normalisation and model)."""
    rows, positions = pairs // views.num_views, pairs % views.num_views
    table = views.views_of(np.arange(len(images)), images.shape[2], images.shape[3])  # [N, V, P]
    params = torch.from_numpy(table[rows.numpy(), positions.numpy()])
    logits, _ = teacher.outputs(views.pixels(images[rows], params))
    return logits


def test_the_split_reaches_the_device_whole_and_in_order(bench, tiny_cifar_dir, tiny_teacher):
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.data.loading import make_loader

    _, views = teacher_and_views(tiny_cifar_dir, tiny_teacher, "identity")
    images = bench.device_split(tiny_cifar_dir, views, "cpu")
    assert images.dtype == torch.uint8 and images.shape == (96, 3, 32, 32) and images.is_contiguous()
    loader = make_loader(open_dataset(tiny_cifar_dir), "train", 32, shuffle=False)
    expected = torch.cat([x for x, _, _ in loader.epoch(0)])
    assert torch.equal(images, expected)


def test_the_eager_anchor_gives_the_teachers_own_logits_for_crop_flip_views(bench, tiny_cifar_dir, tiny_teacher):
    teacher, views = teacher_and_views(tiny_cifar_dir, tiny_teacher, "cifar-crop-flip")
    images = bench.device_split(tiny_cifar_dir, views, "cpu")[:3]  # 3 x 162 = 486 pairs
    figures, logits = bench.time_anchor(teacher, views, images, batch=64, device="cpu", warmup=1, keep=True)
    assert figures["mode"] == "eager" and figures["img_per_s"] > 0 and figures["seconds"] > 0
    # whole batches only: 7 of 64 pairs timed, 38 pairs left out
    assert (figures["batches"], figures["teacher_passes"], figures["pairs_left_out"]) == (7, 448, 38)
    assert logits.shape == (448, 10) and logits.dtype == torch.float32
    # The first batch (image 0, views 0..63), one across images 0 and 1 (views 128..161, then 0..29), the last.
    for batch in (0, 2, 6):
        pairs = torch.arange(batch * 64, (batch + 1) * 64)
        assert torch.equal(logits[pairs], own_logits(teacher, views, images, pairs)), f"batch {batch}"
    assert not torch.equal(logits[0], logits[1])  # views 0 and 1 of image 0 differ (a flip)


def test_the_eager_anchor_runs_one_short_batch_when_the_split_is_smaller(bench, tiny_cifar_dir, tiny_teacher):
    teacher, views = teacher_and_views(tiny_cifar_dir, tiny_teacher, "identity")
    images = bench.device_split(tiny_cifar_dir, views, "cpu")
    figures, logits = bench.time_anchor(teacher, views, images, batch=128, device="cpu", warmup=1, keep=True)
    assert (figures["batches"], figures["batch_size"], figures["teacher_passes"], figures["pairs_left_out"]) == (
        1, 96, 96, 0)
    assert figures["img_per_s"] > 0
    assert torch.equal(logits, own_logits(teacher, views, images, torch.arange(96)))


def test_anchor_batches_enumerate_the_pairs_in_the_stores_order(bench):
    batches = bench.anchor_batches(3, 4, 5, "cpu")  # 12 pairs: two whole batches of 5, 2 pairs left out
    assert batches.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert (batches // 4).tolist()[1] == [1, 1, 1, 2, 2] and (batches % 4).tolist()[1] == [1, 2, 3, 0, 1]
