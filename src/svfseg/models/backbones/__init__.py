"""Backbones for few-shot segmentation: dilated ResNets and VGG-16-bn with five named stages."""

from svfseg.models.backbones.base import STAGE_NAMES, Backbone
from svfseg.models.backbones.factory import BACKBONE_NAMES, build_backbone
from svfseg.models.backbones.weights import (
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
