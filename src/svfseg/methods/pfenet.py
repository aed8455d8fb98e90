"""PFENet (Tian et al., TPAMI 2020): prior mask + Feature Enrichment Module.

Bins follow PFENet's rule: a bin > 1 is an absolute pooled size ([60, 30, 15, 8], which the SVF
repo hard-codes for every dataset); a bin <= 1 is relative to the query feature size (``int(size * r)``,
at least 1), as in PFENet's COCO configs (``[1.0, 0.5, 0.25, 0.125]``) and for small test inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from svfseg.methods.base import FewShotOutput
from svfseg.methods.components import (
    EpisodeCues,
    EpisodeInputs,
    EpisodeMethod,
    classifier,
    conv_relu,
    cross_entropy,
    mid_channels,
    reduction_block,
    resize,
)

Bin = int | float


def check_bins(bins: Sequence[Bin]) -> tuple[Bin, ...]:
    """Bins as a tuple, by PFENet's rule: b <= 1 is relative, b > 1 an absolute (integral) size."""
    out = tuple(bins)
    if not out:
        raise ValueError("PFENet bins must not be empty (the SVF repo: [60, 30, 15, 8])")
    for b in out:
        number = isinstance(b, (int, float)) and not isinstance(b, bool)
        if not number or b <= 0 or (b > 1 and b != int(b)):
            raise ValueError(
                f"PFENet bin {b!r} is invalid: use integers > 1 (absolute sizes, e.g. [60, 30, 15, 8]) or "
                "numbers in (0, 1] (relative to the feature size, e.g. [1.0, 0.5, 0.25, 0.125])"
            )
    return out


def bin_size(bin_: Bin, feat_size: int) -> int:
    """Pooled side of one bin for a query feature of side ``feat_size`` (relative bins: at least 1)."""
    if bin_ <= 1:
        return max(1, int(feat_size * bin_))
    return int(bin_)


class PFENet(EpisodeMethod):
    """Reduction + prior as the baseline; FEM over pyramid bins with inter-scale merging; aux losses.

    k-shot prototypes and priors are averaged over shots, as in PFENet. The loss is the main CE plus
    ``aux_weight`` times the mean CE of the per-bin ``inner_cls`` outputs.

    Args:
        backbone: a Backbone. shot: accepted from the registry, unused (any K works at run time).
        reduce_dim: head width (256). bins: pyramid sizes (> 1 absolute, <= 1 relative).
        aux_weight: weight of the mean auxiliary loss of the bins (1.0).
        dropout: Dropout2d rate after the query/support reduction (0.5).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        shot: int = 1,
        reduce_dim: int = 256,
        bins: Sequence[Bin] = (60, 30, 15, 8),
        aux_weight: float = 1.0,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.bins = check_bins(bins)
        self.aux_weight = float(aux_weight)
        d, n = reduce_dim, len(self.bins)
        self.down_query = reduction_block(mid_channels(backbone), d, dropout=dropout)
        self.down_supp = reduction_block(mid_channels(backbone), d, dropout=dropout)
        self.init_merge = nn.ModuleList([conv_relu(2 * d + 1, d) for _ in range(n)])
        self.alpha_conv = nn.ModuleList([conv_relu(2 * d, d) for _ in range(n - 1)])
        self.beta_conv = nn.ModuleList(
            [nn.Sequential(conv_relu(d, d, 3), conv_relu(d, d, 3)) for _ in range(n)]
        )
        self.inner_cls = nn.ModuleList([classifier(d) for _ in range(n)])
        self.res1 = conv_relu(n * d, d)
        self.res2 = nn.Sequential(conv_relu(d, d, 3), conv_relu(d, d, 3))
        self.cls = classifier(d)

    def enrich(self, query_feat: Tensor, proto: Tensor, prior: Tensor) -> tuple[Tensor, list[Tensor]]:
        """FEM: per-bin merge, top-down alpha merge from the previous bin, beta residual, aux classifier.

        Returns the concatenated pyramid at query feature size and the per-bin aux logits.
        """
        size = query_feat.shape[-2:]
        pyramid: list[Tensor] = []
        aux_logits: list[Tensor] = []
        for i, bin_ in enumerate(self.bins):
            b = bin_size(bin_, size[0])
            q = F.adaptive_avg_pool2d(query_feat, b)
            merged = self.init_merge[i](torch.cat([q, proto.expand_as(q), resize(prior, (b, b))], dim=1))
            if pyramid:
                previous = resize(pyramid[-1], (b, b))
                merged = self.alpha_conv[i - 1](torch.cat([merged, previous], dim=1)) + merged
            merged = self.beta_conv[i](merged) + merged
            aux_logits.append(self.inner_cls[i](merged))
            pyramid.append(resize(merged, size))
        return torch.cat(pyramid, dim=1), aux_logits

    def decode(self, cues: EpisodeCues, inputs: EpisodeInputs) -> FewShotOutput:
        pyramid, aux_logits = self.enrich(cues.query_feat, *cues.shot_means())
        x = self.res1(pyramid)
        x = self.res2(x) + x
        logits = resize(self.cls(x), inputs.query_img.shape[-2:])
        if inputs.query_mask is None:
            return FewShotOutput(logits=logits)
        main = cross_entropy(logits, inputs.query_mask)
        aux = torch.stack([cross_entropy(a, inputs.query_mask) for a in aux_logits]).mean()
        return FewShotOutput(
            logits=logits, loss=main + self.aux_weight * aux, losses={"main": main, "aux": aux}
        )
