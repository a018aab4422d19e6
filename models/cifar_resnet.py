"""CIFAR ResNets (He et al. 2016): depth 6n+2, BasicBlocks, 3x3 stem, no max-pool.

Module names mirror torchvision's ResNet (conv1, bn1, relu, layer1..3, avgpool, fc and, per block,
conv1, bn1, conv2, bn2, downsample, relu) so the same feature taps work on both families.
"""
from __future__ import annotations

from torch import Tensor, nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by BatchNorm, which has its own shift.
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut; `relu` is one module called twice, as in torchvision."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # Not in-place, so a hook on `relu` sees the residual sum intact.
        self.relu = nn.ReLU()
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            # Projection shortcut (1x1 conv + BN) whenever the shape changes, as in the CRD benchmark.
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """Stem (3x3 conv, BN, ReLU), three stages of BasicBlocks, global average pool, linear head."""

    def __init__(self, depth: int, num_classes: int, stem_width: int = 16,
                 widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if len(widths) != 3:
            raise ValueError(f"CIFAR ResNet needs 3 stage widths, got {widths}")
        blocks = (depth - 2) // 6
        self.conv1 = conv3x3(3, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        # The first stage keeps the 32x32 resolution; the next two halve it.
        self.layer1 = self._make_stage(stem_width, widths[0], blocks, stride=1)
        self.layer2 = self._make_stage(widths[0], widths[1], blocks, stride=2)
        self.layer3 = self._make_stage(widths[1], widths[2], blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        self._init_weights()

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        # Only the first block changes shape; the rest map out_channels -> out_channels.
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


# Plain CIFAR ResNets: stem 16, stage widths 16/32/64.
def resnet20(num_classes: int) -> CifarResNet:
    return CifarResNet(20, num_classes)


def resnet32(num_classes: int) -> CifarResNet:
    return CifarResNet(32, num_classes)


def resnet44(num_classes: int) -> CifarResNet:
    return CifarResNet(44, num_classes)


def resnet56(num_classes: int) -> CifarResNet:
    return CifarResNet(56, num_classes)


def resnet110(num_classes: int) -> CifarResNet:
    return CifarResNet(110, num_classes)


# The "x4" variants of the CRD benchmark: stem 32, stage widths 64/128/256.
def resnet8x4(num_classes: int) -> CifarResNet:
    return CifarResNet(8, num_classes, stem_width=32, widths=(64, 128, 256))


def resnet32x4(num_classes: int) -> CifarResNet:
    return CifarResNet(32, num_classes, stem_width=32, widths=(64, 128, 256))
