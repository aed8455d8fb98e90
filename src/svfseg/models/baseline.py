"""The SVF paper's baseline: PFENet with ASPP in place of FEM, main loss only (reference-spec E.2).

Differences from the reference code, on purpose:
* every head module is optimised: the reference's ``get_optim`` leaves ``down_query`` out, so its
  393,216 weights stay at their random initialisation;
* k-shot prototypes and priors are **averaged** over shots; the reference sums them (its weights are all
  ones), which scales the merge input with K.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from svfseg.models.base import FewShotModel, FewShotOutput
from svfseg.models.components import (
    ASPP,
    classifier,
    conv_relu,
    cross_entropy,
    extract_features,
    masked_average_pool,
    prior_mask,
    reduction_block,
    resize,
)
from svfseg.models.registry import register_model


def mid_channels(backbone: nn.Module) -> int:
    """Channels of cat[layer3, layer2]: 1536 for ResNet-50, 768 for VGG-16."""
    return int(backbone.channels["layer3"]) + int(backbone.channels["layer2"])


def prototypes_and_priors(model: FewShotModel, query_img: Tensor, support_img: Tensor, support_mask: Tensor):
    """Reduced query feature (B, D, h, w), shot-averaged prototype (B, D, 1, 1) and prior (B, 1, h, w)."""
    b, k = support_img.shape[:2]
    with model.backbone_grad():
        feats = extract_features(model.backbone, query_img, support_img, support_mask)
    query_feat = model.down_query(feats.query_mid)
    supp_feat = model.down_supp(feats.support_mid.flatten(0, 1))
    protos = masked_average_pool(supp_feat, feats.support_mask_mid.flatten(0, 1)).view(b, k, -1, 1, 1)
    query_high = feats.query_high.repeat_interleave(k, dim=0)
    priors = prior_mask(query_high, feats.support_high_masked.flatten(0, 1))
    priors = resize(priors, query_feat.shape[-2:]).view(b, k, 1, *query_feat.shape[-2:])
    return query_feat, protos.mean(dim=1), priors.mean(dim=1)


@register_model("baseline")
class BaselineASPP(FewShotModel):
    """Query/support reduction, prototype + prior, init_merge, ASPP, residual convs and a 2-way classifier.

    Args:
        backbone: a Backbone (``layer0``..``layer4``, ``channels``).
        shot: supports per episode (any K works; the prototype and prior are averaged).
        reduce_dim: width of the head (256 in the paper).
    """

    def __init__(self, backbone: nn.Module, *, shot: int = 1, reduce_dim: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        self.shot = int(shot)
        self.down_query = reduction_block(mid_channels(backbone), reduce_dim, dropout=0.5)
        self.down_supp = reduction_block(mid_channels(backbone), reduce_dim, dropout=0.5)
        self.init_merge = conv_relu(2 * reduce_dim + 1, reduce_dim)
        self.ASPP_meta = ASPP(reduce_dim, reduce_dim)
        self.res1_meta = conv_relu(self.ASPP_meta.out_channels, reduce_dim)
        self.res2_meta = nn.Sequential(
            conv_relu(reduce_dim, reduce_dim, 3), conv_relu(reduce_dim, reduce_dim, 3)
        )
        self.cls_meta = classifier(reduce_dim)

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
        merge = torch.cat([query_feat, proto.expand_as(query_feat), prior], dim=1)
        x = self.res1_meta(self.ASPP_meta(self.init_merge(merge)))
        x = self.res2_meta(x) + x
        logits = resize(self.cls_meta(x), query_img.shape[-2:])
        if query_mask is None:
            return FewShotOutput(logits=logits)
        loss = cross_entropy(logits, query_mask)
        return FewShotOutput(logits=logits, loss=loss, losses={"main": loss})
