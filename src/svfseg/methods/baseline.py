"""The SVF paper's baseline: PFENet with ASPP in place of FEM, main loss only."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from svfseg.methods.base import FewShotOutput
from svfseg.methods.components import (
    ASPP,
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


class MetaLearner(EpisodeMethod):
    """A method whose head is the baseline's meta learner: init_merge, ASPP, residual convs, classifier.

    The baseline is this head alone and BAM ensembles it with a base learner, so both get it from here.
    The head modules are attributes of the model itself rather than one submodule because checkpoints
    key on their names (``init_merge.*``, ``ASPP_meta.*``, ...).
    """

    init_merge: nn.Sequential
    ASPP_meta: ASPP
    res1_meta: nn.Sequential
    res2_meta: nn.Sequential
    cls_meta: nn.Sequential

    def add_meta_head(self, reduce_dim: int) -> None:
        """Create the head modules; where a method calls this fixes their place in its state dict."""
        self.init_merge = conv_relu(2 * reduce_dim + 1, reduce_dim)
        self.ASPP_meta = ASPP(reduce_dim, reduce_dim)
        self.res1_meta = conv_relu(self.ASPP_meta.out_channels, reduce_dim)
        self.res2_meta = nn.Sequential(
            conv_relu(reduce_dim, reduce_dim, 3), conv_relu(reduce_dim, reduce_dim, 3)
        )
        self.cls_meta = classifier(reduce_dim)

    def meta_logits(self, query_feat: Tensor, proto: Tensor, prior: Tensor) -> Tensor:
        """(B, 2, h, w) scores at query-feature size from the reduced query, one prototype and one prior."""
        merge = torch.cat([query_feat, proto.expand_as(query_feat), prior], dim=1)
        x = self.res1_meta(self.ASPP_meta(self.init_merge(merge)))
        x = self.res2_meta(x) + x
        return self.cls_meta(x)


class BaselineASPP(MetaLearner):
    """Query/support reduction, prototype + prior, init_merge, ASPP, residual convs and a 2-way classifier.

    This is BAM's meta learner alone (SVF repo ``model/aspp.py``). Differences from the SVF repo,
    on purpose:

    * k-shot prototypes and priors are **averaged** over shots; the SVF repo sums them (its shot
      weights are all ones), which scales the merge input with K. With K identical supports the output
      therefore equals the 1-shot output.
    * every head module is optimised: the SVF repo's ``get_optim`` leaves ``down_query`` out, so its
      393,216 weights (ResNet-50) stay at their random init. Here nothing excludes them: the fine-tune
      strategies train every head parameter.

    Args:
        backbone: a Backbone (``layer0``..``layer4``, ``channels``).
        shot: accepted from the registry, unused (any K works at run time: shots are averaged).
        reduce_dim: width of the head (256 in the paper).
        dropout: Dropout2d rate after the query/support reduction (0.5).
    """

    def __init__(
        self, backbone: nn.Module, *, shot: int = 1, reduce_dim: int = 256, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.down_query = reduction_block(mid_channels(backbone), reduce_dim, dropout=dropout)
        self.down_supp = reduction_block(mid_channels(backbone), reduce_dim, dropout=dropout)
        self.add_meta_head(reduce_dim)

    def decode(self, cues: EpisodeCues, inputs: EpisodeInputs) -> FewShotOutput:
        logits = resize(self.meta_logits(cues.query_feat, *cues.shot_means()), inputs.query_img.shape[-2:])
        if inputs.query_mask is None:
            return FewShotOutput(logits=logits)
        loss = cross_entropy(logits, inputs.query_mask)
        return FewShotOutput(logits=logits, loss=loss, losses={"main": loss})
