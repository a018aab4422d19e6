"""benchmarks/stage_two.py's anchor: the plain training loop over images already on the device that the project's
setups are measured against. Here eager, on the CPU, for a few steps: it reads the prepared images, trains the
student, and reports a speed; the captured (CUDA graphs) variant needs a GPU and runs in device_check.sh."""
import importlib.util
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def load_stage_two():
    spec = importlib.util.spec_from_file_location("stage_two", REPO / "benchmarks" / "stage_two.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_eager_anchor_trains_the_student_on_the_prepared_images_and_reports_img_per_s(tiny_cifar_dir):
    from labelopt.models import create_model
    from labelopt.pipeline.data.normalize import Normalizer

    stage_two = load_stage_two()
    images, labels, data = stage_two.device_images(tiny_cifar_dir, 32, "cpu")
    assert images.dtype == torch.uint8 and images.shape == (96, 3, 32, 32) and labels.shape == (96,)
    torch.manual_seed(0)
    model = create_model("resnet20", data.num_classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = stage_two.time_anchor(model, images, labels, Normalizer(data.mean, data.std, "cpu"), batch=16,
                                   steps_per_epoch=2, epochs=2, device="cpu", warmup=2)
    assert result["mode"] == "eager" and result["img_per_s"] > 0 and len(result["epoch_seconds"]) == 2
    assert result["images_per_epoch"] == 32 and torch.isfinite(torch.tensor(result["final_loss"]))
    after = model.state_dict()
    unchanged = [k for k, v in before.items() if v.is_floating_point() and torch.equal(v, after[k])]
    assert not unchanged, f"the anchor left {unchanged} as they were"  # weights and batch-norm statistics alike
    assert "conv1.weight" in before and "fc.weight" in before


def test_anchor_rows_draw_each_epoch_as_a_permutation_and_drop_the_rest():
    stage_two = load_stage_two()
    torch.manual_seed(0)
    rows = stage_two.anchor_rows(10, 3, 7, "cpu")  # 3 steps per epoch (one image left out of each), 7 steps
    assert rows.shape == (7, 3)
    for epoch in (rows[0:3], rows[3:6]):
        assert len(set(epoch.flatten().tolist())) == 9  # no image twice within an epoch
    assert rows.min() >= 0 and rows.max() < 10


def test_replayed_batches_keep_the_first_epoch_and_replay_it_without_the_loader(tiny_cifar_dir):
    """stage_two.py's store_replayed setup: epoch 1 goes through the BatchLoader, later epochs are the same batch
    objects again with no FFCV batch read; outside the context the loader is itself again."""
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.data.loading import make_loader
    from labelopt.pipeline.run.batches import BatchLoader
    from labelopt.pipeline.views.draws import AugmentViews
    from labelopt.pipeline.views.policies import PadCropFlipView

    stage_two = load_stage_two()
    loader = make_loader(open_dataset(tiny_cifar_dir), "train", 32, shuffle=True, seed=1, drop_last=True)
    batches = BatchLoader(loader, AugmentViews(PadCropFlipView()), torch.device("cpu"))
    reads = []
    real_host_batches = loader.host_batches

    def counted(epoch, **kwargs):
        reads.append(epoch)
        yield from real_host_batches(epoch, **kwargs)

    loader.host_batches = counted
    with stage_two.replayed_batches() as kept:
        first = list(batches.epoch(0, torch.Generator().manual_seed(0)))
        second = list(batches.epoch(1, torch.Generator().manual_seed(1)))
    assert len(first) == len(batches) == 3 and reads == [0]
    assert kept == first and all(a is b for a, b in zip(first, second))
    again = list(batches.epoch(1, torch.Generator().manual_seed(1)))
    assert reads == [0, 1] and not torch.equal(again[0].indices, first[0].indices)
