"""A table's packs sized to the device's memory (pipeline/jobs/table_memory.py): the estimate of a student's share
of a pack, and the plan that cuts packs to what the memory holds."""
import torch

from labelopt.models import create_model
from labelopt.pipeline.jobs import table_memory
from labelopt.pipeline.jobs.table_memory import OPTIMIZER_COPIES, member_bytes
from labelopt.pipeline.jobs.tables import TableRequest, make_plan, narrowed
from labelopt.pipeline.jobs.table_file import load_table
from labelopt.tests.test_tables import SMALL, write_table


def saved_by_a_real_step(arch: str, classes: int, side: int, batch: int) -> int:
    """What a real forward pass on the CPU saves for its backward, by the same count."""
    torch.manual_seed(0)
    model = create_model(arch, classes)
    saved = {}

    def keep(tensor):
        saved[id(tensor)] = tensor.numel() * tensor.element_size()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(torch.randn(batch, 3, side, side))
    return sum(saved.values()) + OPTIMIZER_COPIES * sum(p.numel() * p.element_size() for p in model.parameters())


def test_the_estimate_is_what_a_real_step_saves_and_grows_with_batch_side_and_depth():
    assert member_bytes("resnet20", 10, 32, 8) == saved_by_a_real_step("resnet20", 10, 32, 8)
    one = member_bytes("resnet20", 100, 32, 128)
    assert 100 * 2**20 < one < 400 * 2**20  # resnet20 at batch 128 keeps about 190 MiB for its backward
    assert 1.9 < member_bytes("resnet20", 100, 32, 256) / one < 2.1
    assert member_bytes("resnet110", 100, 32, 128) > 5 * one
    assert member_bytes("resnet18", 1000, 224, 64) > member_bytes("resnet18", 1000, 112, 64) * 2.5  # + weights


def test_packs_are_cut_to_what_the_memory_holds(tiny_cifar_dir, tmp_path, monkeypatch):
    """SMALL's vanilla and sl rows (2 seeds each) are one pack of 4 under max_pack 16; a device that holds about 3
    resnet20 students at batch 32 splits them, and with 2 jobs each gets half the memory."""
    each = member_bytes("resnet20", 10, 32, 32)
    monkeypatch.setattr(table_memory, "device_memory", lambda device: (int(3.5 * each / table_memory.BUDGET_SHARE),
                                                                       "test device"))
    table = write_table(tmp_path, SMALL.replace('epochs = 2\n', 'epochs = 2\nbatch_size = 32\n', 1))

    def packs(**request):
        req = TableRequest(str(table), tmp_path / "out", data=str(tiny_cifar_dir), **request)
        plan = make_plan(narrowed(load_table(str(table)), req), req)
        return plan, [[(r.row.name, s) for r, s in p.members] for p in plan.packs]

    plan, cut = packs()
    assert cut == [[("vanilla", 0), ("vanilla", 1), ("sl", 0)], [("sl", 1)]]
    [budget] = plan.describe()["pack_budgets"]
    assert budget["student"] == "resnet20, batch 32" and budget["limit"] == 3 and budget["max_pack"] == 16
    assert "memory: about" in plan.budgets["resnet20, batch 32"].why()
    assert packs(jobs=2)[1] == [[("vanilla", 0)], [("vanilla", 1)], [("sl", 0)], [("sl", 1)]]
    plan, cut = packs(max_pack=2)  # max_pack below what fits: max_pack decides
    assert cut == [[("vanilla", 0), ("vanilla", 1)], [("sl", 0), ("sl", 1)]]
    assert plan.budgets["resnet20, batch 32"].why() == "max_pack 2"


def test_a_dry_run_before_the_data_says_the_memory_is_checked_later(tmp_path):
    req = TableRequest(str(write_table(tmp_path)), tmp_path / "out", dry_run=True)
    plan = make_plan(narrowed(load_table(req.table), req), req)
    [budget] = plan.describe()["pack_budgets"]
    assert budget["limit"] == 16 and budget["memory"] == "checked once the data is prepared"
