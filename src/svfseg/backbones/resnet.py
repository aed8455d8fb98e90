"""Bottleneck ResNets at output stride 8: the PSPNet deep-stem "v2" layout and torchvision's 7x7 stem.

Dilation is built in rather than patched afterwards, so every conv's stride, dilation and padding are
fixed at construction (and inherited by SVF conversion). Two layouts exist in the PFENet/BAM/SVF repos:

* ``uniform`` (PFENet / BAM patch loop): every layer3 block has a 3x3 conv with dilation 2, every layer4
  block dilation 4; stride 1 in both stages, including the downsample convs.
* ``torchvision`` (``replace_stride_with_dilation=[False, True, True]``, SVF baseline and PFENet-SVF):
  the first block of a stage keeps the previous dilation (1 in layer3, 2 in layer4), the others use
  2 / 4.

Both give 473 -> 60x60 at layer2, layer3 and layer4.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.models.resnet import Bottleneck

from svfseg.backbones.base import Backbone, init_weights, scale_width

RESNET_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet50_tv": (3, 4, 6, 3),
}
DEEP_STEM = ("resnet50", "resnet101")
DILATIONS = ("uniform", "torchvision")
STRIDES = {"layer0": 4, "layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8}


def stage_dilations(dilation: str, n_blocks3: int, n_blocks4: int) -> tuple[list[int], list[int]]:
    """Per-block 3x3 dilation of layer3 and layer4 under a dilation layout."""
    if dilation == "uniform":
        return [2] * n_blocks3, [4] * n_blocks4
    if dilation == "torchvision":
        return [1] + [2] * (n_blocks3 - 1), [2] + [4] * (n_blocks4 - 1)
    raise ValueError(f"backbone dilation={dilation!r} is invalid for a ResNet: choose one of {DILATIONS}")


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, padding: int) -> list[tuple[str, nn.Module]]:
    return [
        ("conv", nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)),
        ("bn", nn.BatchNorm2d(cout)),
    ]


def deep_stem(width_mult: float) -> tuple[nn.Sequential, int]:
    """PSPNet stem: three 3x3 conv-BN-ReLU (3->64 s2, 64->64, 64->128) and a 3x3/2 max-pool."""
    c64, c128 = scale_width(64, width_mult), scale_width(128, width_mult)
    specs = [(3, c64, 2), (c64, c64, 1), (c64, c128, 1)]
    layers: list[tuple[str, nn.Module]] = []
    for i, (cin, cout, stride) in enumerate(specs, start=1):
        (_, conv), (_, bn) = _conv_bn(cin, cout, 3, stride, 1)
        layers += [(f"conv{i}", conv), (f"bn{i}", bn), (f"relu{i}", nn.ReLU(inplace=True))]
    layers.append(("maxpool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)))
    return nn.Sequential(OrderedDict(layers)), c128


def torchvision_stem(width_mult: float) -> tuple[nn.Sequential, int]:
    """torchvision stem: 7x7/2 conv-BN-ReLU and a 3x3/2 max-pool."""
    c64 = scale_width(64, width_mult)
    (_, conv), (_, bn) = _conv_bn(3, c64, 7, 2, 3)
    layers = [("conv1", conv), ("bn1", bn), ("relu", nn.ReLU(inplace=True))]
    layers.append(("maxpool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)))
    return nn.Sequential(OrderedDict(layers)), c64


def make_stage(inplanes: int, planes: int, stride: int, dilations: list[int]) -> tuple[nn.Sequential, int]:
    """A stage of Bottlenecks (stride on the 3x3 conv); block 0 gets the 1x1 downsample projection."""
    out = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out)
        )
    blocks = [Bottleneck(inplanes, planes, stride=stride, downsample=downsample, dilation=dilations[0])]
    blocks += [Bottleneck(out, planes, dilation=d) for d in dilations[1:]]
    return nn.Sequential(*blocks), out


def build_resnet(name: str, *, dilation: str = "uniform", width_mult: float = 1.0) -> Backbone:
    """A ResNet backbone at output stride 8 (see the module docstring for the two dilation layouts)."""
    if name not in RESNET_BLOCKS:
        raise ValueError(f"unknown ResNet {name!r}: choose one of {tuple(RESNET_BLOCKS)}")
    n1, n2, n3, n4 = RESNET_BLOCKS[name]
    dil3, dil4 = stage_dilations(dilation, n3, n4)
    layer0, c0 = deep_stem(width_mult) if name in DEEP_STEM else torchvision_stem(width_mult)
    planes = [scale_width(p, width_mult) for p in (64, 128, 256, 512)]
    layer1, c1 = make_stage(c0, planes[0], 1, [1] * n1)
    layer2, c2 = make_stage(c1, planes[1], 2, [1] * n2)
    layer3, c3 = make_stage(c2, planes[2], 1, dil3)
    layer4, c4 = make_stage(c3, planes[3], 1, dil4)
    stages = {"layer0": layer0, "layer1": layer1, "layer2": layer2, "layer3": layer3, "layer4": layer4}
    channels = {"layer0": c0, "layer1": c1, "layer2": c2, "layer3": c3, "layer4": c4}
    family = "resnet_deep" if name in DEEP_STEM else "resnet_tv"
    backbone = Backbone(name, family, stages, channels, STRIDES, width_mult)
    init_weights(backbone)
    return backbone
