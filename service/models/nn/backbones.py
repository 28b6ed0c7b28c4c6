"""2D backbones for TSM: ResNet-50/101 and MobileNetV2.

Parameter names follow the networks the official TSM code wraps (torchvision's ResNet, the
official MobileNetV2), so official checkpoints load without a renaming table. Each backbone
returns pooled features ``[N, feature_dim]``; the classifier lives in the TSM network.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from service.models.nn.shift import OnlineShift, ShiftPlace, TemporalShift

Arch = Literal["resnet50", "resnet101", "mobilenetv2"]


def _init_weights(module: nn.Module) -> None:
    """He initialisation: random-weight models stay out of denormal floats (slow on CPU)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _shift(net: nn.Module, num_segments: int, shift_div: int, online: bool) -> nn.Module:
    return OnlineShift(net, shift_div) if online else TemporalShift(net, num_segments, shift_div)


# ------------------------------------------------------------------------------------- ResNet
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        out = planes * self.expansion
        self.conv1: nn.Module = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)  # stride here: v1.5
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet(nn.Module):
    def __init__(self, layers: tuple[int, int, int, int]):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], stride=1)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 512 * Bottleneck.expansion
        _init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        layers += [Bottleneck(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def insert_temporal_shift(self, num_segments: int, shift_div: int, place: ShiftPlace, online: bool = False) -> None:
        """``online``: the one-sided shift of live streams (``blockres`` only), in the same blocks."""
        if place == "blockres":
            # Deep nets (layer3 of 23 blocks: ResNet-101) shift every other block, as the official code.
            every = 2 if len(self.layer3) >= 23 else 1
            for stage in self.stages():
                for i, block in enumerate(stage):
                    if i % every == 0:
                        assert isinstance(block, Bottleneck)
                        block.conv1 = _shift(block.conv1, num_segments, shift_div, online)
        elif online:
            raise ValueError("the online shift goes on residual branches: use the 'blockres' placement")
        elif place == "block":
            for stage in self.stages():
                for i, block in enumerate(list(stage)):
                    stage[i] = TemporalShift(block, num_segments, shift_div)
        else:
            raise ValueError(f"unknown shift placement {place!r}; use 'blockres' or 'block'")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


# -------------------------------------------------------------------------------- MobileNetV2
# (expansion t, output channels c, repeats n, first stride s), as in the paper and official code.
MOBILENETV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def _conv_bn_relu6(inp: int, oup: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    ]


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        expand = [] if expand_ratio == 1 else _conv_bn_relu6(inp, hidden, 1)
        self.conv = nn.Sequential(
            *expand,
            *_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        inp = 32  # the stem is not scaled by width, as in the official code
        self.feature_dim = _make_divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        features: list[nn.Module] = [nn.Sequential(*_conv_bn_relu6(3, inp, 3, stride=2))]
        for t, c, n, s in MOBILENETV2_SETTING:
            oup = _make_divisible(c * width_mult) if t > 1 else c
            for i in range(n):
                features.append(InvertedResidual(inp, oup, s if i == 0 else 1, t))
                inp = oup
        features.append(nn.Sequential(*_conv_bn_relu6(inp, self.feature_dim, 1)))
        self.features = nn.Sequential(*features)
        _init_weights(self)

    def insert_temporal_shift(self, num_segments: int, shift_div: int, place: ShiftPlace, online: bool = False) -> None:
        if place != "blockres":
            raise ValueError("MobileNetV2 supports only the 'blockres' shift placement")
        # Shift the expansion conv of every residual block that has one (10 blocks at width 1): the
        # blocks the official offline model and its online demo both shift.
        for m in self.features:
            if isinstance(m, InvertedResidual) and m.use_res_connect and len(m.conv) == 8:
                m.conv[0] = _shift(m.conv[0], num_segments, shift_div, online)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(3).mean(2)  # mean, not a pool module: bit-equal to official


def build_backbone(arch: Arch, width_mult: float = 1.0) -> ResNet | MobileNetV2:
    if arch == "resnet50":
        return ResNet((3, 4, 6, 3))
    if arch == "resnet101":
        return ResNet((3, 4, 23, 3))
    if arch == "mobilenetv2":
        return MobileNetV2(width_mult)
    raise ValueError(f"unknown arch {arch!r}; use resnet50, resnet101 or mobilenetv2")
