"""Pieces shared by the baseline, PFENet and BAM (reference-spec B.3 and E.1).

* features: mid-level = cat[layer3, layer2 resized to layer3] (1536 ch R50 / 768 VGG); high-level = layer4,
  where the support's layer4 runs on its masked layer3 map;
* masked average pooling (prototype), the training-free prior mask, ASPP, the 1x1 reduction block, CE loss.

All K supports of a batch go through the backbone in one call (B*K images), so a 5-shot step costs one
backbone pass over 6B images rather than six passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = 255
PROTO_EPS = 0.0005  # the references' Σ(f·m) / (Σm + 0.0005)
PRIOR_EPS = 1e-7


def resize(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear resize with align_corners=True, the references' convention everywhere."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


@dataclass
class Features:
    """Backbone features of a batch of episodes (B queries, K supports each)."""

    query_mid: Tensor  # (B, C_mid, h, w): cat[layer3, layer2]
    support_mid: Tensor  # (B, K, C_mid, h, w)
    support_mask_mid: Tensor  # (B, K, 1, h, w): support foreground at layer3 size
    query_high: Tensor  # (B, C_high, h4, w4): layer4
    support_high_masked: Tensor  # (B, K, C_high, h4, w4): layer4(layer3 * mask) * mask
    query_low: Tensor  # (B, C2, h2, w2): layer2 (BAM's Gram matrix)
    support_low: Tensor  # (B, K, C2, h2, w2)


def extract_features(
    backbone: nn.Module, query_img: Tensor, support_img: Tensor, support_mask: Tensor
) -> Features:
    """Run the backbone the PFENet way on queries and supports together.

    Args:
        query_img: (B, 3, H, W); support_img: (B, K, 3, H, W); support_mask: (B, K, H, W) in {0, 1, 255}
            (255 counts as background, as in the references).
    Call it inside ``model.backbone_grad()`` so a frozen backbone runs without autograd.
    """
    b, k = support_img.shape[:2]
    images = torch.cat([query_img, support_img.flatten(0, 1)], dim=0)
    x = backbone.layer0(images)
    x = backbone.layer1(x)
    low = backbone.layer2(x)
    mid3 = backbone.layer3(low)
    size3 = mid3.shape[-2:]
    mid = torch.cat([mid3, resize(low, size3)], dim=1)

    q_mid3, s_mid3 = mid3[:b], mid3[b:]
    fg = (support_mask.flatten(0, 1) == 1).unsqueeze(1).to(s_mid3.dtype)
    mask3 = resize(fg, size3)
    q_high = backbone.layer4(q_mid3)
    s_high = backbone.layer4(s_mid3 * mask3)
    s_high = s_high * resize(fg, s_high.shape[-2:])
    return Features(
        query_mid=mid[:b],
        support_mid=mid[b:].view(b, k, *mid.shape[1:]),
        support_mask_mid=mask3.view(b, k, 1, *size3),
        query_high=q_high,
        support_high_masked=s_high.view(b, k, *s_high.shape[1:]),
        query_low=low[:b],
        support_low=low[b:].view(b, k, *low.shape[1:]),
    )


def masked_average_pool(feat: Tensor, mask: Tensor) -> Tensor:
    """Prototype (N, C, 1, 1) = Σ_xy f·m / (Σ_xy m + 0.0005); ``mask`` is resized to ``feat`` if needed."""
    mask = resize(mask, feat.shape[-2:])
    area = mask.sum(dim=(2, 3), keepdim=True) + PROTO_EPS
    return (feat * mask).sum(dim=(2, 3), keepdim=True) / area


def prior_mask(query_high: Tensor, support_high_masked: Tensor, eps: float = PRIOR_EPS) -> Tensor:
    """Training-free prior (N, 1, h, w): max cosine similarity to any support pixel, min-max normalised.

    Args:
        query_high: (N, C, h, w) query layer4 features.
        support_high_masked: (N, C, hs, ws) support layer4 features already multiplied by the mask.
    """
    n, _, h, w = query_high.shape
    q = query_high.flatten(2)  # (N, C, hw)
    s = support_high_masked.flatten(2).transpose(1, 2)  # (N, hs*ws, C)
    sim = torch.bmm(s, q)  # (N, hs*ws, hw)
    norm = torch.bmm(s.norm(dim=2, keepdim=True), q.norm(dim=1, keepdim=True))
    sim = (sim / (norm + eps)).max(dim=1).values  # (N, hw)
    low = sim.min(dim=1, keepdim=True).values
    high = sim.max(dim=1, keepdim=True).values
    sim = (sim - low) / (high - low + eps)
    return sim.view(n, 1, h, w)


def reduction_block(in_channels: int, out_channels: int = 256, dropout: float = 0.5) -> nn.Sequential:
    """down_query / down_supp: 1x1 conv without bias, ReLU, Dropout2d."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
    )


def conv_relu(in_channels: int, out_channels: int, kernel: int = 1, *, bias: bool = False) -> nn.Sequential:
    """Conv (same padding) + ReLU, the building block of every head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel, padding=kernel // 2, bias=bias),
        nn.ReLU(inplace=True),
    )


def classifier(channels: int, num_outputs: int = 2, dropout: float = 0.1) -> nn.Sequential:
    """cls: conv3x3 (no bias), ReLU, Dropout2d(0.1), conv1x1 -> 2 (with bias)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
        nn.Conv2d(channels, num_outputs, kernel_size=1),
    )


class ASPP(nn.Module):
    """Five parallel branches (image pool, 1x1, 3x3 at dilation 6/12/18), all with bias and ReLU.

    Output: 5 * ``out_channels`` channels (1280 for 256), kaiming-normal initialised as in the reference.
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 256, rates: tuple[int, ...] = (6, 12, 18)):
        super().__init__()
        self.pool_branch = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True)
        )
        self.branches = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))]
            + [
                nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 3, padding=r, dilation=r), nn.ReLU(inplace=True)
                )
                for r in rates
            ]
        )
        self.out_channels = out_channels * (len(rates) + 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool_branch(x).expand(-1, -1, *x.shape[-2:])
        return torch.cat([pooled, *(branch(x) for branch in self.branches)], dim=1)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """CE with ignore 255, logits resized (bilinear, align_corners) to the target size when needed."""
    logits = resize(logits, target.shape[-2:])
    return F.cross_entropy(logits, target.long(), ignore_index=IGNORE_INDEX)
