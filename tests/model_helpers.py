"""The smallest FewShotModel a fine-tune strategy can train: a real backbone and a 1x1 head on layer4."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from svfseg.models.base import FewShotModel, FewShotOutput


class Net(FewShotModel):
    """A real backbone and a 1x1 head on layer4: the smallest FewShotModel a strategy can train."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.channels["layer4"], 2, 1)

    def forward(self, query_img, support_img=None, support_mask=None, query_mask=None, class_idx=None,
                query_base_label=None) -> FewShotOutput:  # fmt: skip
        with self.backbone_grad():
            feats = self.backbone(query_img)["layer4"]
        logits = F.interpolate(self.head(feats), size=query_img.shape[-2:], mode="bilinear")
        loss = None if query_mask is None else F.cross_entropy(logits, query_mask)
        return FewShotOutput(logits, loss)
