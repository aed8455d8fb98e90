"""The smallest FewShotModel a fine-tune strategy can train: a real backbone and a 1x1 head on layer4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from svfseg.methods.base import FewShotModel, FewShotOutput


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


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """``steps`` SGD steps on random 33 px images and masks (generator seeded with 0): what the strategy
    tests need to see which tensors move."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        img, mask = torch.randn(2, 3, 33, 33, generator=gen), torch.randint(0, 2, (2, 33, 33), generator=gen)
        optimizer.zero_grad()
        model(img, query_mask=mask).loss.backward()
        optimizer.step()
