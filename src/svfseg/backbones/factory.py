"""``build_backbone``: one entry point from a config (name, weights, dilation, width, options) to a Backbone."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from svfseg.backbones.base import Backbone, check_width_mult
from svfseg.backbones.resnet import RESNET_BLOCKS, build_resnet
from svfseg.backbones.timm_cnn import TIMM_CNN, TIMM_CNN_MODELS, TIMM_CNN_OPTIONS, build_timm_cnn
from svfseg.backbones.vgg import build_vgg16_bn
from svfseg.backbones.vit import VIT_MODELS, build_vit
from svfseg.backbones.weights import load_backbone_weights

log = logging.getLogger(__name__)

BACKBONE_NAMES: tuple[str, ...] = (*RESNET_BLOCKS, "vgg16_bn", *VIT_MODELS, *TIMM_CNN_MODELS)
# Options only the ViT backbones take (svfseg.backbones.vit.build_vit).
VIT_OPTIONS = ("timm_name", "stage_blocks", "embed_dim", "depth", "num_heads")
# Backbone name -> the extra options it takes (timm_cnn: svfseg.backbones.timm_cnn).
BACKBONE_OPTIONS: dict[str, tuple[str, ...]] = {
    **{name: VIT_OPTIONS for name in VIT_MODELS},
    TIMM_CNN: TIMM_CNN_OPTIONS,
}


def build_backbone(
    name: str,
    *,
    pretrained: str | Path | None = None,
    weights_format: str = "auto",
    dilation: str = "uniform",
    width_mult: float = 1.0,
    warn_if_random: bool = True,
    **options: Any,
) -> Backbone:
    """Build a backbone and, when ``pretrained`` is a path, load its ImageNet weights strictly.

    Args:
        name: ``resnet50`` / ``resnet101`` (PSPNet deep stem), ``resnet50_tv`` (7x7 stem), ``vgg16_bn``, a ViT
            (``dinov2_vits14``, ...), ``efficientnet_lite0/1/2`` or ``timm_cnn`` (any timm CNN, ``timm_name``).
        pretrained: weight file, or None for a random init (a warning says results are meaningless).
        weights_format: ``auto`` | ``pspnet`` | ``torchvision`` | ``timm`` | ``native``.
        dilation: ``uniform`` (PFENet/BAM) or ``torchvision`` layout of the dilated ResNet stages.
        width_mult: channel scale; 1.0 is the full-width network.
        warn_if_random: False when a checkpoint overwrites every weight right after (no misleading warning).
        options: ViTs: ``timm_name``, ``stage_blocks``, ``embed_dim``, ``depth``, ``num_heads``;
            ``timm_cnn``: ``timm_name``, ``hub_weights``; no other backbone takes options.
    """
    width_mult = check_width_mult(width_mult)
    allowed = BACKBONE_OPTIONS.get(name, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"backbone option(s) {unknown} are not options of backbone {name!r}"
            + (f"; it takes {list(allowed)}" if allowed else "")
        )
    if name in TIMM_CNN_MODELS:
        if pretrained is None and warn_if_random and not options.get("hub_weights", False):
            log.warning(
                "backbone %s has no pretrained weights (pretrained=None): random init, smoke tests only", name
            )
        if dilation != "uniform":
            raise ValueError(
                f"backbone.dilation={dilation!r} applies to ResNets; timm CNN backbones are dilated by timm "
                "(output_stride=8)"
            )
        return build_timm_cnn(
            name, pretrained=pretrained, weights_format=weights_format, width_mult=width_mult, **options
        )
    if name in VIT_MODELS:
        if pretrained is None and warn_if_random:
            log.warning(
                "backbone %s has no pretrained weights (pretrained=None): random init, smoke tests only", name
            )
        if dilation != "uniform":
            raise ValueError(
                f"backbone.dilation={dilation!r} applies to ResNets; ViT backbones have no dilation"
            )
        return build_vit(name, pretrained=pretrained, width_mult=width_mult, **options)
    if name in RESNET_BLOCKS:
        backbone = build_resnet(name, dilation=dilation, width_mult=width_mult)
    elif name == "vgg16_bn":
        backbone = build_vgg16_bn(dilation=dilation, width_mult=width_mult)
    else:
        raise ValueError(f"backbone name={name!r} is unknown: choose one of {BACKBONE_NAMES}")
    if pretrained is None and warn_if_random:
        log.warning(
            "backbone %s has no pretrained weights (pretrained=None): it is randomly initialised, so "
            "few-shot results are meaningless without ImageNet weights. Fine for smoke tests only (its "
            "BatchNorm statistics are untrained, so every strategy but finetune=bn passes its features on "
            "unnormalised: a random ResNet-101's layer4 is hundreds of times larger than ResNet-50's and its "
            "loss turns NaN within a few steps); set backbone.pretrained to the weight file for real runs "
            "(README, 'Getting the weights': python -m svfseg.weights list).",
            name,
        )
    elif pretrained is not None:
        load_backbone_weights(backbone, pretrained, weights_format)
    return backbone
