"""Build a few-shot method from the plain ``method`` / ``backbone`` specs of a run config.

``load_pretrained=False`` builds the same architecture without reading weight files: used when a
checkpoint supplies every tensor (eval.py, resume, analysis), so those files need not exist there.
A method that builds its own backbone from the run (BAM: its stage-1 PSPNet's) says so in the method
table (``svfseg.methods.registry``, ``from_run``); every other method gets the configured backbone.
"""

from __future__ import annotations

from typing import Any

from svfseg.backbones import build_backbone
from svfseg.data.fold import FoldSpec
from svfseg.methods.base import FewShotModel
from svfseg.methods.registry import method as method_entry


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
    entry = method_entry(name)
    if entry.from_run is not None:
        return entry.from_run(dict(backbone), fold=fold, load_pretrained=load_pretrained, **options)
    spec = dict(backbone)
    bb_name = spec.pop("name")
    pretrained = spec.pop("pretrained", None)
    bb = build_backbone(
        bb_name,
        pretrained=pretrained if load_pretrained else None,
        weights_format=spec.pop("weights_format", "auto"),
        dilation=spec.pop("dilation", "uniform"),
        width_mult=float(spec.pop("width_mult", 1.0)),
        warn_if_random=load_pretrained,
        **spec,  # ViT / timm_cnn options (timm_name, ...); build_backbone refuses them elsewhere
    )
    return entry.factory(bb, shot=fold.shot, **options)
