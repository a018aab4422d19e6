"""How many students of one kind a table packs at once on this machine: max_pack, or fewer where memory says so.

A pack holds every member's activations until its backward (both layouts: the grouped network's are G times as
wide, the stacked members' are G graphs), so a member costs about what one training step of the student keeps for
its backward, plus its weights, their gradients and momenta. That is estimated without running anything: a forward
pass on the meta device (shapes, no memory, no arithmetic) at the row's batch size and input side, adding up the
tensors autograd saves. Float32 throughout, so bf16 runs are over-estimated, never under.

The budget is a share of the device's whole memory (the GPU's, or the machine's RAM on a CPU) split over
--jobs; the whole memory, not the free, so the plan comes out the same each time the table runs on this machine
and a stopped table continues the packs it started.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

BUDGET_SHARE = 0.7  # of the device's memory for a pack's tensors: the rest for the allocator's slack, the loader,
# the process and anything else on the machine
OPTIMIZER_COPIES = 4  # weights, gradients, momenta and the step's temporaries


@dataclass(frozen=True)
class PackBudget:
    """What limits one kind of student's packs: max_pack, or the members that fit in the budget."""
    limit: int
    max_pack: int
    member_bytes: int
    budget_bytes: int
    device: str

    def describe(self) -> dict:
        return {"limit": self.limit, "max_pack": self.max_pack, "member_mib": round(self.member_bytes / 2**20, 1),
                "budget_mib": round(self.budget_bytes / 2**20), "device": self.device}

    def why(self) -> str:
        if self.limit >= self.max_pack:
            return f"max_pack {self.max_pack}"
        return (f"memory: about {self.member_bytes / 2**20:,.0f} MiB a student, {self.budget_bytes / 2**30:,.1f} GiB "
                f"for packs on the {self.device}")


def member_bytes(arch: str, classes: int, side: int, batch_size: int) -> int:
    """A student's share of a pack: what its training step saves for backward, and its optimizer's copies."""
    from ...models import create_model

    with torch.device("meta"):
        model = create_model(arch, classes)
        images = torch.empty(batch_size, 3, side, side)
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved[id(tensor)] = tensor.numel() * tensor.element_size()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(images)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return sum(saved.values()) + OPTIMIZER_COPIES * weights


def device_memory(device: str) -> tuple[int, str]:
    """The whole memory of the device a table's runs use, and its name ("auto": the GPU where there is one)."""
    if device != "cpu" and torch.cuda.is_available():
        index = torch.device(device).index if device.startswith("cuda:") else 0
        properties = torch.cuda.get_device_properties(index)
        return int(properties.total_memory), properties.name
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "CPU (RAM)"


def pack_budget(arch: str, classes: int, side: int, batch_size: int, max_pack: int, device: str,
                jobs: int) -> PackBudget:
    each = member_bytes(arch, classes, side, batch_size)
    total, name = device_memory(device)
    budget = int(BUDGET_SHARE * total / max(jobs, 1))
    return PackBudget(max(1, min(max_pack, budget // each)), max_pack, each, budget, name)
