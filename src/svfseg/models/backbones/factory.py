"""``build_backbone``: one entry point from a config (name, weights, dilation, width) to a Backbone."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from svfseg.models.backbones.base import Backbone, check_width_mult
from svfseg.models.backbones.resnet import RESNET_BLOCKS, build_resnet
from svfseg.models.backbones.vgg import build_vgg16_bn
from svfseg.models.backbones.vit import VIT_MODELS, build_vit
from svfseg.models.backbones.weights import load_backbone_weights

log = logging.getLogger(__name__)

BACKBONE_NAMES: tuple[str, ...] = (*RESNET_BLOCKS, "vgg16_bn", *VIT_MODELS)
# Options only the ViT backbones take (svfseg.models.backbones.vit.build_vit).
VIT_OPTIONS = ("timm_name", "stage_blocks", "embed_dim", "depth", "num_heads")


def build_backbone(
    name: str,
    *,
    pretrained: str | Path | None = None,
    weights_format: str = "auto",
    dilation: str = "uniform",
    width_mult: float = 1.0,
    warn_if_random: bool = True,
    **vit_options: Any,
) -> Backbone:
    """Build a backbone and, when ``pretrained`` is a path, load its ImageNet weights strictly.

    Args:
        name: ``resnet50`` / ``resnet101`` (PSPNet deep stem), ``resnet50_tv`` (7x7 stem) or ``vgg16_bn``.
        pretrained: weight file, or None for a random init (a warning says results are meaningless).
        weights_format: ``auto`` | ``pspnet`` | ``torchvision`` | ``timm`` | ``native``.
        dilation: ``uniform`` (PFENet/BAM) or ``torchvision`` layout of the dilated ResNet stages.
        width_mult: channel scale; 1.0 is the reference network.
        warn_if_random: False when a checkpoint overwrites every weight right after (no misleading warning).
        vit_options: ``timm_name``, ``stage_blocks``, ``embed_dim``, ``depth``, ``num_heads`` (ViTs only).
    """
    width_mult = check_width_mult(width_mult)
    unknown = sorted(set(vit_options) - set(VIT_OPTIONS))
    if unknown or (vit_options and name not in VIT_MODELS):
        raise ValueError(
            f"backbone option(s) {unknown or sorted(vit_options)} are not options of backbone {name!r}"
            + (f"; ViT backbones take {list(VIT_OPTIONS)}" if name in VIT_MODELS else "")
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
        return build_vit(name, pretrained=pretrained, width_mult=width_mult, **vit_options)
    if name in RESNET_BLOCKS:
        backbone = build_resnet(name, dilation=dilation, width_mult=width_mult)
    elif name == "vgg16_bn":
        backbone = build_vgg16_bn(dilation=dilation, width_mult=width_mult)
    else:
        raise ValueError(f"backbone name={name!r} is unknown: choose one of {BACKBONE_NAMES}")
    if pretrained is None and warn_if_random:
        log.warning(
            "backbone %s has no pretrained weights (pretrained=None): it is randomly initialised, so "
            "few-shot results are meaningless without ImageNet weights. Fine for smoke tests only; set "
            "backbone.pretrained to the weight file for real runs (README, 'Getting the weights': python -m svfseg.weights list).",
            name,
        )
    elif pretrained is not None:
        load_backbone_weights(backbone, pretrained, weights_format)
    return backbone
