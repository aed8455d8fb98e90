"""``bitfit``: train the biases of the chosen stages (BitFit, Ben Zaken et al., ACL 2022).

The ResNet and EfficientNet convs have no bias (BN follows each), so BitFit here trains every bias the
stages have: the BatchNorm affine (its bias and its scale: BN's shift is the conv's bias, and the scale
is the matching per-channel parameter), the bias of every conv and Linear that has one (VGG's convs, a
ViT's Linears), and the affine of LayerNorm / GroupNorm layers (ViTs). BN statistics stay frozen (eval
mode), as for every strategy but ``bn``.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from svfseg.finetune.base import FinetuneStrategy, NamedParams
from svfseg.finetune.options import DEFAULT_BACKBONE_LR_MULT, DEFAULT_STAGES, parse_stages
from svfseg.methods.base import FewShotModel

NORMS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)


def bitfit_params(backbone: nn.Module, stages: tuple[str, ...]) -> NamedParams:
    """Norm-layer weights and biases, and conv / Linear biases, of ``stages`` (qualified backbone names)."""
    out: NamedParams = []
    for stage in stages:
        for name, m in getattr(backbone, stage).named_modules(prefix=stage):
            if isinstance(m, NORMS):
                out += [(f"{name}.{n}", p) for n, p in m.named_parameters(recurse=False)]
            elif isinstance(m, (_ConvNd, nn.Linear)) and m.bias is not None:
                out.append((f"{name}.bias", m.bias))
    return out


class BitFitStrategy(FinetuneStrategy):
    """Biases and norm affine of ``stages`` train; everything else in the backbone is frozen.

    Args:
        stages: default layer2-4 (SVF's).
        backbone_lr_mult: lr multiplier of the backbone groups.
        checkpointing: activation checkpointing of the stages backward passes through.
    """

    name = "bitfit"

    def __init__(
        self,
        *,
        stages: Any = DEFAULT_STAGES,
        backbone_lr_mult: float = DEFAULT_BACKBONE_LR_MULT,
        checkpointing: bool = False,
    ) -> None:
        super().__init__(backbone_lr_mult=backbone_lr_mult, checkpointing=checkpointing)
        self.stages = parse_stages(stages, "stages")

    def options(self) -> dict[str, Any]:
        return {"stages": list(self.stages), **super().options()}

    def select(self, model: FewShotModel) -> NamedParams:
        selected = bitfit_params(model.backbone, self.stages)
        if not selected:
            raise ValueError(
                f"finetune=bitfit: stages {list(self.stages)} hold no bias and no norm layer; choose "
                "stages with BatchNorm/LayerNorm layers or biased convs"
            )
        return selected
