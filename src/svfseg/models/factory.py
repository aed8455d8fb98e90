"""Build a few-shot method from the plain ``method`` / ``backbone`` specs of a run config.

``load_pretrained=False`` builds the same architecture without reading weight files: used when a
checkpoint supplies every tensor (eval.py, resume, analysis), so those files need not exist there.
"""

from __future__ import annotations

import logging
from typing import Any

from svfseg.data.fold import FoldSpec
from svfseg.models.backbones import build_backbone
from svfseg.models.backbones.timm_cnn import BAM_ON_TIMM_CNN, TIMM_CNN
from svfseg.models.backbones.vit import VIT_MODELS
from svfseg.models.base import FewShotModel
from svfseg.models.pspnet import PSPNet, backbone_shell, load_base_learner
from svfseg.models.registry import build_model

log = logging.getLogger(__name__)

BAM_ON_VIT = (
    "method=bam needs a dilated CNN backbone: its base learner is a PSPNet trained on ResNet/VGG features "
    "(stage=base), and BAM's released base learners are ResNet-50/VGG-16 files; use method=baseline or "
    "method=pfenet with a ViT backbone"
)


def build_fewshot_model(
    method: dict[str, Any],
    backbone: dict[str, Any],
    *,
    fold: FoldSpec,
    load_pretrained: bool = True,
) -> FewShotModel:
    """The configured method on the configured backbone (BAM: on its stage-1 PSPNet backbone)."""
    options = dict(method)
    name = options.pop("name")
    spec = dict(backbone)
    bb_name = spec.pop("name")
    pretrained = spec.pop("pretrained", None)
    weights_format = spec.pop("weights_format", "auto")
    width_mult = float(spec.pop("width_mult", 1.0))
    dilation = spec.pop("dilation", "uniform")
    extra = spec  # ViT / timm_cnn options (timm_name, ...); build_backbone refuses them elsewhere

    if name == "bam":
        if bb_name in VIT_MODELS:
            raise ValueError(BAM_ON_VIT)
        if bb_name == TIMM_CNN:
            raise ValueError(BAM_ON_TIMM_CNN)
        split_dataset = fold.split_dataset
        path = options.pop("base_learner", None)
        if load_pretrained:
            if path is None:
                raise ValueError("method.base_learner is null: BAM needs the stage-1 PSPNet checkpoint")
            pspnet = load_base_learner(
                path,
                backbone_name=bb_name,
                dataset=split_dataset,
                dataset_name=fold.dataset,
                fold=fold.fold,
                width_mult=width_mult,
                coco_split=fold.coco_split,
                num_classes=len(fold.base_classes) + 1,
                classes=fold.fold_record() if fold.folds is not None else None,
            )
        else:  # weights come from a BAM checkpoint next
            pspnet = PSPNet(backbone_shell(bb_name, width_mult), num_classes=len(fold.base_classes) + 1)
        return build_model("bam", pspnet.backbone, shot=fold.shot, base_learner=pspnet, **options)

    options.pop("base_learner", None)
    bb = build_backbone(
        bb_name,
        pretrained=pretrained if load_pretrained else None,
        weights_format=weights_format,
        dilation=dilation,
        width_mult=width_mult,
        warn_if_random=load_pretrained,
        **extra,
    )
    return build_model(name, bb, shot=fold.shot, **options)
