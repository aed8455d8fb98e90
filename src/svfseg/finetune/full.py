"""``full``: fine-tune every parameter of the backbone (paper Table 5, "fully fine-tune")."""

from __future__ import annotations

from typing import Any

from svfseg.backbones.base import STAGE_NAMES
from svfseg.finetune.base import NamedParams
from svfseg.finetune.options import DEFAULT_BACKBONE_LR_MULT
from svfseg.finetune.part import PartStrategy
from svfseg.finetune.selection import stage_params, weight_layer_params
from svfseg.methods.base import FewShotModel


class FullStrategy(PartStrategy):
    """Every parameter of layer0-layer4 trains: conv weights and biases and the BN affine (ViTs: every
    Linear, LayerNorm and the position embedding).

    The paper defines full fine-tuning as "all the parameters in the backbone". BN stays in eval mode
    (running statistics frozen), as the SVF repo's training loop does for every strategy.
    ``train_bn=False`` leaves the norm layers (and a ViT's position embedding) out, so that only the
    conv / linear weights differ from SVF.
    """

    name = "full"

    def __init__(
        self,
        *,
        train_bn: bool = True,
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

    def select(self, model: FewShotModel) -> NamedParams:
        # The same sets as part's for ResNet/VGG (every stage parameter is a conv or BN parameter there);
        # for ViTs the Linear layers, LayerNorms and the position embedding.
        if self.train_bn:
            return stage_params(model.backbone, self.stages)
        return weight_layer_params(model.backbone, self.stages)

    def options(self) -> dict[str, Any]:
        return {
            "train_bn": self.train_bn,
            "backbone_lr_mult": self.backbone_lr_mult,
            "checkpointing": self.checkpointing,
        }
