"""``bn``: fine-tune only the BatchNorm layers (paper Table 4, row "BN")."""

from __future__ import annotations

from typing import ClassVar

from svfseg.backbones.base import STAGE_NAMES
from svfseg.finetune.base import FinetuneStrategy, NamedParams
from svfseg.finetune.options import DEFAULT_BACKBONE_LR_MULT, parse_flag
from svfseg.finetune.selection import bn_affine
from svfseg.methods.base import FewShotModel


class BNStrategy(FinetuneStrategy):
    """BN affine parameters of the whole backbone train, and BN runs in train mode (batch statistics,
    running statistics updated): the one strategy with ``model.frozen_bn = False``.

    There is no ``stages`` option: the BN mode is one switch for the whole backbone
    (``FewShotModel.frozen_bn``), so restricting the affine parameters to some stages would still move
    the running statistics of the others.
    """

    name = "bn"
    frozen_bn: ClassVar[bool] = False

    def __init__(
        self, *, backbone_lr_mult: float = DEFAULT_BACKBONE_LR_MULT, checkpointing: bool = False
    ) -> None:
        if parse_flag(checkpointing, "checkpointing"):
            raise ValueError(
                "finetune=bn does not support checkpointing=true: BN runs in train mode, so recomputing a "
                "stage in backward would update its running statistics a second time; set "
                "finetune.checkpointing=false"
            )
        super().__init__(backbone_lr_mult=backbone_lr_mult)

    def select(self, model: FewShotModel) -> NamedParams:
        return bn_affine(model.backbone, STAGE_NAMES)
