"""``part``: classic partial fine-tuning of conv weights, by stage (paper Table 5) and kernel (Table 6)."""

from __future__ import annotations

from typing import Any

from svfseg.finetune.base import FinetuneStrategy, NamedParams
from svfseg.finetune.options import (
    CONV_TYPES,
    DEFAULT_BACKBONE_LR_MULT,
    DEFAULT_STAGES,
    parse_flag,
    parse_stages,
)
from svfseg.finetune.selection import bn_affine, conv_params
from svfseg.methods.base import FewShotModel
from svfseg.svf.options import check_choice


class PartStrategy(FinetuneStrategy):
    """Train the conv weights (and conv biases, VGG) of ``stages``; BN stays frozen in eval mode.

    Args:
        stages: stages to train, e.g. ``["layer4"]``; default layer2-4 (Table 6 "for fair comparison").
        conv_type: ``all`` | ``3x3`` | ``1x1`` (the 1x1 set includes the downsample projections).
        train_bn: also train the BN affine parameters of ``stages`` (BN statistics stay frozen).
            Off by default: the paper ablates BN separately (Table 4) and freezes it for SVF, so the
            conv-weight strategies differ from SVF only in which conv parameters train.
        backbone_lr_mult: lr multiplier of the backbone groups.
        checkpointing: activation checkpointing of the stages backward passes through.
    """

    name = "part"

    def __init__(
        self,
        *,
        stages: Any = DEFAULT_STAGES,
        conv_type: str = "all",
        train_bn: bool = False,
        backbone_lr_mult: float = DEFAULT_BACKBONE_LR_MULT,
        checkpointing: bool = False,
    ) -> None:
        super().__init__(backbone_lr_mult=backbone_lr_mult, checkpointing=checkpointing)
        self.stages = parse_stages(stages, "stages")
        self.conv_type = check_choice("conv_type", conv_type, CONV_TYPES)
        self.train_bn = parse_flag(train_bn, "train_bn")

    def options(self) -> dict[str, Any]:
        return {
            "stages": list(self.stages),
            "conv_type": self.conv_type,
            "train_bn": self.train_bn,
            **super().options(),
        }

    def select(self, model: FewShotModel) -> NamedParams:
        selected = conv_params(model.backbone, self.stages, self.conv_type)
        if self.train_bn:
            selected += bn_affine(model.backbone, self.stages)
        return selected
