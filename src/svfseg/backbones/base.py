"""The backbone contract shared by every architecture: five named stages and a dict of their outputs.

Methods read mid-level features from ``layer2``/``layer3`` and the prior from ``layer4``; fine-tune
strategies select parameters by stage. Both only rely on what :class:`Backbone` exposes, so ResNet and
VGG are interchangeable.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

STAGE_NAMES: tuple[str, ...] = ("layer0", "layer1", "layer2", "layer3", "layer4")

# Which family of weight files fits a backbone; the weight loader checks a file against it.
FAMILIES = ("resnet_deep", "resnet_tv", "vgg", "vit", "timm_cnn")


def scale_width(channels: int, width_mult: float) -> int:
    """Scaled channel count (at least 1); ``width_mult=1.0`` returns ``channels`` unchanged."""
    return max(1, round(channels * width_mult))


def check_width_mult(width_mult: float) -> float:
    """``width_mult`` must be a positive number; narrow models exist for CPU tests and demos."""
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise ValueError(
            f"backbone width_mult={width_mult!r} is invalid: use a positive number "
            "(1.0 = the full widths, e.g. 0.125 for CPU smoke runs)"
        )
    return float(width_mult)


def init_weights(module: nn.Module) -> None:
    """He init (fan_out) for convs, unit BN: torchvision's init, so random backbones train sanely."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Backbone(nn.Module):
    """Five sequential stages ``layer0``..``layer4``; ``forward`` returns every stage output.

    Attributes:
        name: the ``build_backbone`` name (``resnet50``, ``vgg16_bn``, ...).
        family: which weight files fit (``resnet_deep``, ``resnet_tv``, ``vgg``, ``vit`` or ``timm_cnn``).
        channels: output channels per stage.
        strides: output stride per stage (input size / feature size, before ceil rounding).
        width_mult: channel scale the backbone was built with.
    """

    stage_names: tuple[str, ...] = STAGE_NAMES
    # Whether finetune=svf also converts the depthwise convs (one singular value per channel). The timm
    # CNNs (EfficientNet-Lite, MobileNets) set it: most of their spatial filtering is depthwise.
    svf_depthwise: bool = False

    def __init__(
        self,
        name: str,
        family: str,
        stages: Mapping[str, nn.Module],
        channels: Mapping[str, int],
        strides: Mapping[str, int],
        width_mult: float,
    ) -> None:
        super().__init__()
        if tuple(stages) != STAGE_NAMES:
            raise ValueError(f"a backbone needs stages {STAGE_NAMES} in this order, got {tuple(stages)}")
        if family not in FAMILIES:
            raise ValueError(f"backbone family={family!r} is not one of {FAMILIES}")
        self.name = name
        self.family = family
        self.width_mult = width_mult
        for stage, module in stages.items():
            self.add_module(stage, module)
        self.channels: dict[str, int] = {s: int(channels[s]) for s in STAGE_NAMES}
        self.strides: dict[str, int] = {s: int(strides[s]) for s in STAGE_NAMES}

    def stage(self, name: str) -> nn.Module:
        """The stage module called ``name``; a clear error for anything else."""
        if name not in self.stage_names:
            raise KeyError(f"backbone stage {name!r} does not exist: choose one of {self.stage_names}")
        return getattr(self, name)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats: dict[str, Tensor] = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            feats[name] = x
        return feats

    def extra_repr(self) -> str:
        return f"name={self.name!r}, width_mult={self.width_mult}, channels={self.channels}"
