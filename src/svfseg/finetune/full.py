"""``full``: fine-tune every conv of the backbone (paper Table 5, "fully fine-tune")."""

from __future__ import annotations

from typing import Any

from svfseg.finetune.options import DEFAULT_BACKBONE_LR_MULT
from svfseg.finetune.part import PartStrategy
from svfseg.models.backbones.base import STAGE_NAMES


class FullStrategy(PartStrategy):
    """Every conv weight and bias of layer0-layer4 trains; BN affine only with ``train_bn`` (see ``part``).

    BN stays in eval mode (running statistics frozen), as in the reference code's ``fix_bn``. With
    ``train_bn=True`` this is literally "all the parameters in the backbone".
    """

    name = "full"

    def __init__(
        self,
        *,
        train_bn: bool = False,
        backbone_lr_mult: float = DEFAULT_BACKBONE_LR_MULT,
        checkpointing: bool = False,
    ) -> None:
        super().__init__(
            stages=STAGE_NAMES,
            conv_type="all",
            train_bn=train_bn,
            backbone_lr_mult=backbone_lr_mult,
            checkpointing=checkpointing,
        )

    def options(self) -> dict[str, Any]:
        return {
            "train_bn": self.train_bn,
            "backbone_lr_mult": self.backbone_lr_mult,
            "checkpointing": self.checkpointing,
        }
