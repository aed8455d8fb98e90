"""PFENet (Tian et al., TPAMI 2020): prior mask + Feature Enrichment Module (reference-spec E.3).

Bins: integers are absolute pooled sizes ([60, 30, 15, 8] as the reference hard-codes for every dataset);
floats are relative to the query feature size (``int(size * r)``, at least 1), as PFENet's COCO configs
and small test inputs need. Prototypes and priors are averaged over shots.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from svfseg.models.base import FewShotModel, FewShotOutput
from svfseg.models.baseline import mid_channels, prototypes_and_priors
from svfseg.models.components import classifier, conv_relu, cross_entropy, reduction_block, resize
from svfseg.models.registry import register_model


@register_model("pfenet")
class PFENet(FewShotModel):
    """Reduction + prior as the baseline; FEM over pyramid bins with inter-scale merging; aux losses.

    Args:
        backbone: a Backbone. shot: supports per episode.
        reduce_dim: head width (256). bins: pyramid sizes (ints absolute, floats relative).
        aux_weight: weight of the mean auxiliary loss of the bins (1.0).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        shot: int = 1,
        reduce_dim: int = 256,
        bins: Sequence[int | float] = (60, 30, 15, 8),
        aux_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not bins:
            raise ValueError("PFENet bins must not be empty (reference: [60, 30, 15, 8])")
        self.backbone = backbone
        self.shot = int(shot)
        self.bins = tuple(bins)
        self.aux_weight = float(aux_weight)
        d = reduce_dim
        self.down_query = reduction_block(mid_channels(backbone), d, dropout=0.5)
        self.down_supp = reduction_block(mid_channels(backbone), d, dropout=0.5)
        n = len(self.bins)
        self.init_merge = nn.ModuleList([conv_relu(2 * d + 1, d) for _ in range(n)])
        self.alpha_conv = nn.ModuleList([conv_relu(2 * d, d) for _ in range(n - 1)])
        self.beta_conv = nn.ModuleList(
            [nn.Sequential(conv_relu(d, d, 3), conv_relu(d, d, 3)) for _ in range(n)]
        )
        self.inner_cls = nn.ModuleList([classifier(d) for _ in range(n)])
        self.res1 = conv_relu(n * d, d)
        self.res2 = nn.Sequential(conv_relu(d, d, 3), conv_relu(d, d, 3))
        self.cls = classifier(d)

    def bin_size(self, bin_: int | float, feat_size: int) -> int:
        if isinstance(bin_, float):
            return max(1, int(feat_size * bin_))
        return int(bin_)

    def forward(
        self,
        query_img: Tensor,
        support_img: Tensor,
        support_mask: Tensor,
        query_mask: Tensor | None = None,
        class_idx: Tensor | None = None,
        query_base_label: Tensor | None = None,
    ) -> FewShotOutput:
        query_feat, proto, prior = prototypes_and_priors(self, query_img, support_img, support_mask)
        size = query_feat.shape[-2:]
        pyramid, aux_logits = [], []
        previous: Tensor | None = None
        for i, bin_ in enumerate(self.bins):
            b = self.bin_size(bin_, size[0])
            q = F.adaptive_avg_pool2d(query_feat, b)
            merged = self.init_merge[i](torch.cat([q, proto.expand_as(q), resize(prior, (b, b))], dim=1))
            if previous is not None:
                merged = self.alpha_conv[i - 1](torch.cat([merged, resize(previous, (b, b))], dim=1)) + merged
            merged = self.beta_conv[i](merged) + merged
            aux_logits.append(self.inner_cls[i](merged))
            previous = resize(merged, size)
            pyramid.append(previous)
        x = self.res1(torch.cat(pyramid, dim=1))
        x = self.res2(x) + x
        logits = resize(self.cls(x), query_img.shape[-2:])
        if query_mask is None:
            return FewShotOutput(logits=logits)
        main = cross_entropy(logits, query_mask)
        aux = torch.stack([cross_entropy(a, query_mask) for a in aux_logits]).mean()
        return FewShotOutput(
            logits=logits, loss=main + self.aux_weight * aux, losses={"main": main, "aux": aux}
        )
