"""G models of one architecture packed into one network that computes all of them in a single pass.

A small student leaves a GPU idle: one resnet20 step is launch-bound. Packing G of them turns each layer into one
layer G times as wide whose members never mix: a convolution gets G times its groups (member g reads only its own
input channels and writes only its own outputs), BatchNorm gets G times its channels (statistics are per channel,
so per member, running statistics included), a linear head becomes a batched matmul over the members. Layers
without parameters (ReLU, pooling, flatten, residual sums) act per channel or per position and need nothing.

The packed input is the members' inputs side by side on the channel axis: [B, G * 3, H, W], member g in channels
[3g, 3g + 3); the output is [B, G * classes], member g's logits in columns [g * classes, (g + 1) * classes).
`member_state(packed, g)` gives member g's weights as an ordinary state dict of the original architecture, and
`pack_models` packs any models of one architecture (for instance members made with different seeds).

The transformation is generic: it rewrites the modules of any network built from Conv2d, BatchNorm2d, Linear and
parameter-free modules (the CIFAR and torchvision ResNets of the registry), so no model is copied by hand, and the
models themselves stay unmodified. A module it does not know that holds parameters is refused.

Two layouts (`PACK_LAYOUTS`) take and give the same tensors:
- `grouped`: the one wide network above, for a GPU, where G small steps cost G times the kernel launches.
- `stacked`: the members as they are, each run on its own channels in turn, for a CPU, where a step is bound by
  arithmetic and a grouped convolution runs slower than its members' own (docs/benchmarks.md). What a pack saves
  there is the process, the loader, the decode and the store gather, which its members share.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class PackedLinear(nn.Module):
    """G linear layers side by side: input [B, G * in_features] -> output [B, G * out_features]."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        per_member = x.view(x.shape[0], self.members, self.in_features)
        out = torch.einsum("bgi,goi->bgo", per_member, self.weight)
        if self.bias is not None:
            out = MemberBias.apply(out, self.bias)
        return out.reshape(x.shape[0], self.members * self.out_features)


class MemberBias(torch.autograd.Function):
    """out [B, G, O] + bias [G, O], whose bias gradient on the CPU sums each member's [B, O] block on its own.

    Autograd would sum the [B, G * O] gradient over the batch in one reduction, which past G * O of about 32
    vectorizes across members and adds in another order than nn.Linear's sum over a member's [B, O] alone: the
    pack would drift from its members by rounding. On a GPU, where one kernel matters more than the order of a
    sum that atomics and tiling already vary, it stays one reduction."""

    @staticmethod
    def forward(ctx, out: Tensor, bias: Tensor) -> Tensor:
        return out + bias

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        if grad.is_cuda:
            return grad, grad.sum(0)
        return grad, torch.stack([grad[:, g].contiguous().sum(0) for g in range(grad.shape[1])])


def _packed_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    first, g = convs[0], len(convs)
    packed = nn.Conv2d(first.in_channels * g, first.out_channels * g, first.kernel_size, first.stride,
                       first.padding, first.dilation, first.groups * g, first.bias is not None, first.padding_mode)
    with torch.no_grad():
        # groups * G groups: member g's output channels read exactly member g's input channels.
        packed.weight.copy_(torch.cat([c.weight for c in convs]))
        if first.bias is not None:
            packed.bias.copy_(torch.cat([c.bias for c in convs]))
    return packed


def _packed_batchnorm(norms: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    first = norms[0]
    packed = nn.BatchNorm2d(first.num_features * len(norms), first.eps, first.momentum, first.affine,
                            first.track_running_stats)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(first, name) is not None:
                getattr(packed, name).copy_(torch.cat([getattr(n, name) for n in norms]))
        if first.num_batches_tracked is not None:
            packed.num_batches_tracked.copy_(first.num_batches_tracked)
    return packed


def _packed_linear(linears: list[nn.Linear]) -> PackedLinear:
    first = linears[0]
    packed = PackedLinear(len(linears), first.in_features, first.out_features, first.bias is not None)
    with torch.no_grad():
        packed.weight.copy_(torch.stack([m.weight for m in linears]))
        if packed.bias is not None:
            packed.bias.copy_(torch.stack([m.bias for m in linears]))
    return packed


PACKERS = {nn.Conv2d: _packed_conv, nn.BatchNorm2d: _packed_batchnorm, nn.Linear: _packed_linear}


class MemberStack(nn.Module):
    """The `stacked` layout: copies of the members, member g run on channels [g * C, (g + 1) * C) of the packed
    input, their outputs side by side as the grouped network gives them."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(copy.deepcopy(m) for m in members)

    def forward(self, x: Tensor) -> Tensor:
        width = x.shape[1] // len(self.members)
        # each member's channels as a dense tensor of the batch's memory format, as a standalone run's input is
        layout = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else torch.contiguous_format
        return torch.cat([member(x[:, g * width:(g + 1) * width].contiguous(memory_format=layout))
                          for g, member in enumerate(self.members)], dim=1)


def group_models(members: list[nn.Module]) -> nn.Module:
    """The `grouped` layout: one network computing every member side by side."""
    packed = copy.deepcopy(members[0])
    named = [dict(m.named_modules()) for m in members]
    for name, module in list(packed.named_modules()):
        packer = PACKERS.get(type(module))
        if packer is None:
            if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(False)):
                raise ValueError(f"cannot pack {name or 'the model'} ({type(module).__name__}): only Conv2d, "
                                 f"BatchNorm2d, Linear and parameter-free modules are known")
            continue
        _replace(packed, name, packer([n[name] for n in named]))
    return packed


PACK_LAYOUTS = {"grouped": group_models, "stacked": MemberStack}  # names also in names.py, without torch


def pack_models(members: list[nn.Module], layout: str = "grouped") -> nn.Module:
    """One network computing every member (same architecture) in `layout`; the members are left as they are."""
    if not members:
        raise ValueError("a pack needs at least one member")
    return PACK_LAYOUTS[layout](members)


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def member_state(packed: nn.Module, g: int, members: int) -> dict[str, Tensor]:
    """Member g's weights and buffers, keyed and shaped as in the unpacked architecture (copies)."""
    if isinstance(packed, MemberStack):
        return {key: tensor.clone() for key, tensor in packed.members[g].state_dict().items()}
    state = {}
    modules = dict(packed.named_modules())
    for key, tensor in packed.state_dict().items():
        owner, _, _ = key.rpartition(".")
        module = modules[owner]
        if tensor.dim() == 0:
            state[key] = tensor.clone()
        elif isinstance(module, PackedLinear):
            state[key] = tensor[g].clone()
        else:
            size = tensor.shape[0] // members
            state[key] = tensor[g * size:(g + 1) * size].clone()
    return state


def load_member_states(packed: nn.Module, states: list[dict[str, Tensor]]) -> None:
    """Each member's weights (as member_state gives them) into the pack: what resumes a pack from its members."""
    if isinstance(packed, MemberStack):
        for member, state in zip(packed.members, states):
            member.load_state_dict(state)
        return
    modules = dict(packed.named_modules())
    with torch.no_grad():
        for key, tensor in packed.state_dict().items():
            module = modules[key.rpartition(".")[0]]
            if tensor.dim() == 0:
                tensor.copy_(states[0][key])
            elif isinstance(module, PackedLinear):
                tensor.copy_(torch.stack([s[key] for s in states]))
            else:
                tensor.copy_(torch.cat([s[key] for s in states]))


def packed_inputs(inputs: list[Tensor]) -> Tensor:
    """Each member's input batch [B, C, H, W] side by side on the channel axis: [B, G * C, H, W]."""
    return torch.cat(inputs, dim=1)


def member_outputs(outputs: Tensor, members: int) -> Tensor:
    """The pack's [B, G * classes] as [B, G, classes]: member g's logits are [:, g]."""
    return outputs.view(outputs.shape[0], members, -1)
