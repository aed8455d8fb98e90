"""Trainable-parameter counts per optimizer group, for logs and run records."""

from __future__ import annotations

from torch import nn

from svfseg.finetune.base import backbone_stages


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Counts of trainable elements: ``head``, ``backbone.<stage>`` for each stage, ``trainable``, ``frozen``.

    ``head`` is every trainable parameter outside the backbone (frozen modules included, where a
    non-zero count would reveal a leak); ``frozen`` counts the parameters that do not train.
    """
    stages = backbone_stages(model)
    stage_of = {
        id(p): f"backbone.{stage}" for stage in stages for p in getattr(model.backbone, stage).parameters()
    }
    counts = {"head": 0, **{f"backbone.{s}": 0 for s in stages}, "trainable": 0, "frozen": 0}
    for p in model.parameters():
        if not p.requires_grad:
            counts["frozen"] += p.numel()
            continue
        counts[stage_of.get(id(p), "head")] += p.numel()
        counts["trainable"] += p.numel()
    return counts
