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
