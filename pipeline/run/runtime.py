"""Where and how work runs: device, precision, seeds, torch.distributed."""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but no CUDA GPU is visible; use --device cpu")
    if device.type == "cuda" and device.index is None:
        # Indexed, so that the loader's and the writer's threads can bind to it (set_device refuses plain "cuda").
        return torch.device("cuda", torch.cuda.current_device())
    return device


def check_precision(device: torch.device, bf16: bool) -> None:
    if bf16 and device.type != "cuda":
        raise UserError("--bf16 autocast runs on a GPU only; drop --bf16 or use --device cuda")


def autocast(device: torch.device, bf16: bool):
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A contiguous copy of a host tensor on `device`. To a GPU through pinned memory, without blocking: a copy from
    pageable memory would make the host wait for every kernel queued before it."""
    if device.type != "cuda":
        return tensor.to(device, memory_format=torch.contiguous_format, copy=True)
    pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor)
    return pinned.to(device, non_blocking=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class DistInfo:
    """rank: the process's place in the job (what happens once per job is rank 0's); local_rank: its place on its
    node (its GPU); node_rank and nodes: torchrun's GROUP_RANK and GROUP_WORLD_SIZE, one per `torchrun` agent."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node_rank: int = 0
    nodes: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    env = os.environ
    info = DistInfo(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")), int(env.get("GROUP_RANK", "0")),
                    int(env.get("GROUP_WORLD_SIZE", "1")))
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        atexit.register(leave_process_group)
    return info


def leave_process_group() -> None:
    """Destroy the process group while the interpreter is still whole: left to the interpreter's teardown, gloo's
    worker threads can free tensors after Python is gone and abort the process (SIGABRT, "terminate called without
    an active exception"), which turns a finished rank into a failed one and leaves torchrun waiting."""
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(info: DistInfo, device_name: str) -> torch.device:
    device = resolve_device(device_name)
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def describe_job(info: DistInfo) -> str:
    """`2 processes on 2 nodes (gloo)`: the job's shape, for rank 0's log."""
    nodes = f"{info.nodes} node" + ("s" if info.nodes > 1 else "")
    return f"{info.world_size} processes on {nodes} ({dist.get_backend()})"


def from_main(info: DistInfo, produce):
    """What `produce()` returns on rank 0, on every rank: for what only rank 0 reads (a file that may exist on its
    node alone). A UserError there is raised on every rank, so no rank waits for a broadcast that never comes."""
    if not info.enabled:
        return produce()
    box = [None]
    if info.is_main:
        try:
            box[0] = ("value", produce())
        except UserError as exc:
            box[0] = ("error", str(exc))
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value


def gather_all(info: DistInfo, value) -> list:
    """Every rank's `value` (small, picklable), in rank order, on every rank."""
    if not info.enabled:
        return [value]
    everyone = [None] * info.world_size
    dist.all_gather_object(everyone, value)
    return everyone


def check_same_inputs(info: DistInfo, inputs: dict) -> None:
    """Refuse, on every rank, a job whose ranks read different inputs: each node reads the dataset, store and
    checkpoints at the paths given, so a node with another copy there would silently mix two jobs in one."""
    if not info.enabled:
        return
    mine = {k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest() for k, v in
            inputs.items()}
    everyone = gather_all(info, (info.node_rank, mine))
    for rank, (node, theirs) in enumerate(everyone):
        differs = [k for k in mine if theirs[k] != everyone[0][1][k]]
        if differs:
            raise UserError(f"rank {rank} (node {node}) reads another {differs[0]} than rank 0 at the same paths; "
                            f"every node must hold the same copy of the data, label store and checkpoints "
                            f"(a shared filesystem, or identical per-node copies)")
