"""VGG-16 with BatchNorm, sliced into five stages as PFENet / BAM / SVF do.

The module indices inside ``features`` are kept (layer k holds ``features[start_k:end_k]``), so a
torchvision ``features.N.*`` key maps to ``layer{k}.{N - start_k}.*``. Pools use ``ceil_mode=True``,
so 473 -> 237 / 119 / 60 / 30 / 30. The last pool of torchvision's ``features`` (index 43) is dropped:
layer4 keeps layer3's resolution.
"""

from __future__ import annotations

from torch import nn

from svfseg.backbones.base import Backbone, init_weights, scale_width

# torchvision's configuration "D"; "M" is a max-pool. The trailing pool is omitted (see above).
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip
# [start, end) indices into ``features`` for layer0..layer4.
VGG_SLICES: dict[str, tuple[int, int]] = {
    "layer0": (0, 7),
    "layer1": (7, 14),
    "layer2": (14, 24),
    "layer3": (24, 34),
    "layer4": (34, 43),
}
VGG_STRIDES = {"layer0": 2, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16}


def vgg_features(width_mult: float) -> list[nn.Module]:
    """The 43 modules of ``vgg16_bn().features[:43]`` (conv-BN-ReLU triples and ceil-mode pools)."""
    layers: list[nn.Module] = []
    cin = 3
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            continue
        cout = scale_width(int(item), width_mult)
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    return layers


def build_vgg16_bn(*, dilation: str = "uniform", width_mult: float = 1.0) -> Backbone:
    """VGG-16-bn backbone; output stride 16 at layer3/4 as in the PFENet/BAM/SVF repos (never dilated)."""
    if dilation != "uniform":
        raise ValueError(
            f"backbone dilation={dilation!r} does not apply to vgg16_bn: the PFENet/BAM/SVF VGG is never "
            "dilated (layer3/4 stay at stride 16). Leave dilation='uniform' (the default)."
        )
    features = vgg_features(width_mult)
    stages = {name: nn.Sequential(*features[a:b]) for name, (a, b) in VGG_SLICES.items()}
    widths = [scale_width(c, width_mult) for c in (64, 128, 256, 512, 512)]
    channels = dict(zip(VGG_SLICES, widths))
    backbone = Backbone("vgg16_bn", "vgg", stages, channels, VGG_STRIDES, width_mult)
    init_weights(backbone)
    return backbone
