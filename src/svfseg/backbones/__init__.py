"""Backbones for few-shot segmentation with five named stages: dilated ResNets, VGG-16-bn, timm ViTs and CNNs."""

from svfseg.backbones.base import STAGE_NAMES, Backbone
from svfseg.backbones.factory import BACKBONE_NAMES, build_backbone
from svfseg.backbones.weights import (
    WEIGHT_FORMATS,
    BackboneWeightsError,
    WeightsReport,
    load_backbone_weights,
)

__all__ = [
    "BACKBONE_NAMES",
    "STAGE_NAMES",
    "WEIGHT_FORMATS",
    "Backbone",
    "BackboneWeightsError",
    "WeightsReport",
    "build_backbone",
    "load_backbone_weights",
]
