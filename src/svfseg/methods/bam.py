"""BAM (Lang et al., CVPR 2022): a meta learner on novel classes ensembled with a frozen base learner.

As in BAM, two backbones exist on purpose: ``self.backbone`` is the meta branch's copy of the
stage-1 PSPNet backbone (fine-tune strategies such as SVF convert and train only this one), while the
base learner keeps its own untouched, frozen copy, so its base-class predictions stay those of stage 1
whatever the strategy does to the meta branch.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from svfseg.backbones import Backbone
from svfseg.backbones.timm_cnn import BAM_ON_TIMM_CNN, TIMM_CNN
from svfseg.backbones.vit import VIT_MODELS
from svfseg.methods.base import FewShotOutput
from svfseg.methods.baseline import MetaLearner
from svfseg.methods.components import (
    EpisodeCues,
    EpisodeInputs,
    cross_entropy,
    mid_channels,
    reduction_block,
    resize,
)
from svfseg.methods.pspnet import PSPNet, backbone_shell, load_base_learner

if TYPE_CHECKING:
    from svfseg.data.fold import FoldSpec

log = logging.getLogger(__name__)

GRAM_EPS = 1e-7
BAM_ON_VIT = (
    "method=bam needs a dilated CNN backbone: its base learner is a PSPNet trained on ResNet/VGG features "
    "(stage=base), and BAM's released base learners are ResNet-50/VGG-16 files; use method=baseline or "
    "method=pfenet with a ViT backbone"
)


# ----------------------------------------------------------------------------- Gram adjustment


def normalized_gram(feat: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, C) with G_ij = <f_i, f_j> / (|f_i| |f_j| + 1e-7), computed in float32.

    Sums over thousands of pixels overflow float16, so autocast is switched off here.
    """
    with torch.autocast(device_type=feat.device.type, enabled=False):
        f = feat.flatten(2).float()
        norm = f.norm(dim=2, keepdim=True)
        return torch.bmm(f, f.transpose(1, 2)) / (torch.bmm(norm, norm.transpose(1, 2)) + GRAM_EPS)


def gram_distance(query_low: Tensor, support_low: Tensor) -> Tensor:
    """BAM's scene-difference estimate, (B,): ||G_q - G_s||_F / ||1_{CxC}||_F = ||G_q - G_s||_F / C."""
    diff = normalized_gram(query_low) - normalized_gram(support_low)
    return diff.flatten(1).norm(dim=1) / query_low.shape[1]


class ShotReweighter(nn.Module):
    """K-shot weights from the per-shot Gram estimates (BAM's ``kshot_rw``).

    The estimates are sorted ascending so the two small 1x1 convs see them in a canonical order, mapped
    shot -> hidden -> shot, put back in the supports' order and softmaxed over shots.
    """

    def __init__(self, shot: int, hidden: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(shot, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, shot, kernel_size=1),
        )

    def forward(self, est: Tensor) -> Tensor:
        """(B, K) estimates -> (B, K) weights summing to 1 over shots."""
        ordered, order = est.sort(dim=1)
        scores = self.net(ordered[:, :, None, None]).flatten(1)
        scores = scores.gather(1, order.argsort(dim=1))
        return scores.softmax(dim=1)


# ----------------------------------------------------------------------------- model


def _merge_conv() -> nn.Conv2d:
    """1x1 conv 2 -> 1 without bias, initialised to pass its first input through ([1, 0])."""
    conv = nn.Conv2d(2, 1, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    return conv


class BAM(MetaLearner):
    """BAM on top of a trained stage-1 :class:`PSPNet` (its backbone, PPM and classifier).

    Args:
        base_learner: the stage-1 PSPNet; it is frozen here and always runs in eval mode under no_grad.
        shot: supports per episode (K > 1 adds the learned shot reweighting).
        reduce_dim: width of the meta learner (256 in BAM's code).
        aux_meta_weight: weight of CE on the meta learner's own output.
        aux_base_weight: weight of CE of the base learner on ``query_base_label`` (no gradient; logged).
        kshot_hidden: hidden width of the shot reweighting (``kshot_trans_dim``, 2 in BAM's code).
    """

    def __init__(
        self,
        base_learner: PSPNet,
        *,
        shot: int = 1,
        reduce_dim: int = 256,
        aux_meta_weight: float = 1.0,
        aux_base_weight: float = 1.0,
        kshot_hidden: int = 2,
    ) -> None:
        super().__init__()
        if not isinstance(base_learner, PSPNet):
            raise TypeError(
                f"BAM needs the stage-1 PSPNet as base_learner, got {type(base_learner).__name__}; "
                "load it with svfseg.methods.pspnet.load_base_learner"
            )
        if shot < 1:
            raise ValueError(f"shot must be >= 1, got {shot}")
        self.shot = int(shot)
        self.aux_meta_weight = float(aux_meta_weight)
        self.aux_base_weight = float(aux_base_weight)
        self.num_base_classes = base_learner.num_classes - 1
        self.backbone = copy.deepcopy(base_learner.backbone)
        self.base_learner = base_learner
        self.base_learner.requires_grad_(False)
        self.base_learner.eval()

        mid = mid_channels(self.backbone)
        self.down_query = reduction_block(mid, reduce_dim, dropout=0.5)
        self.down_supp = reduction_block(mid, reduce_dim, dropout=0.5)
        self.add_meta_head(reduce_dim)
        self.gram_merge = _merge_conv()
        self.cls_merge = _merge_conv()
        self.kshot_rw = ShotReweighter(self.shot, kshot_hidden) if self.shot > 1 else None

    def frozen_modules(self) -> list[nn.Module]:
        return [self.base_learner]

    # ------------------------------------------------------------------ pieces
    def shot_weights(self, est: Tensor) -> Tensor:
        """(B, K) Gram estimates -> (B, K) weights over shots; all ones for 1-shot."""
        if self.kshot_rw is None:
            return torch.ones_like(est)
        return self.kshot_rw(est)

    def base_map(self, base_prob: Tensor, class_idx: Tensor | None) -> Tensor:
        """(B, 1, h, w) summed base-class probability; in training without the episode's own class.

        In training the episode class is a base class, so the base learner is expected to fire on it;
        counting it as background evidence would teach the ensemble to suppress the target.
        """
        weights = torch.ones(base_prob.shape[:2], dtype=base_prob.dtype, device=base_prob.device)
        weights[:, 0] = 0.0
        if self.training:
            if class_idx is None:
                raise ValueError(
                    "BAM in training mode needs class_idx (batch['class_idx'], the episode class's index "
                    "among the fold's base classes) to drop that class from the base map"
                )
            class_idx = class_idx.to(device=base_prob.device, dtype=torch.long).view(-1)
            ok = ((class_idx >= 0) & (class_idx < self.num_base_classes)).all()
            # Checked on the device (no host sync per step); a bad index fails at the next sync point.
            torch._assert_async(
                ok,
                f"BAM: class_idx is outside [0, {self.num_base_classes}): in training class_idx must index "
                "the fold's base classes",
            )
            weights[torch.arange(weights.shape[0], device=weights.device), class_idx + 1] = 0.0
        return torch.einsum("bc,bchw->bhw", weights, base_prob).unsqueeze(1)

    def ensemble(self, meta_out: Tensor, base_out: Tensor, est: Tensor, class_idx: Tensor | None) -> Tensor:
        """Final (B, 2, h, w) scores: Gram-adjusted meta probabilities, bg merged with the base map."""
        p = meta_out.softmax(dim=1)
        q = base_out.softmax(dim=1)
        est_map = est.view(-1, 1, 1, 1).to(p.dtype).expand_as(p[:, :1])
        bg = self.gram_merge(torch.cat([p[:, :1], est_map], dim=1))
        fg = self.gram_merge(torch.cat([p[:, 1:], est_map], dim=1))
        merged_bg = self.cls_merge(torch.cat([bg, self.base_map(q, class_idx)], dim=1))
        return torch.cat([merged_bg, fg], dim=1)

    def base_logits(self, query_img: Tensor) -> Tensor:
        """Base-learner scores at feature resolution, from its own frozen backbone."""
        self.base_learner.eval()
        with torch.no_grad():
            return self.base_learner.head(self.base_learner.backbone(query_img)["layer4"])

    # ------------------------------------------------------------------ forward
    def check_shots(self, shots: int) -> None:
        """BAM's shot weighting has exactly ``shot`` inputs."""
        if shots != self.shot:
            raise ValueError(
                f"BAM was built for shot={self.shot} but the batch has {shots} supports per episode"
            )

    def decode(self, cues: EpisodeCues, inputs: EpisodeInputs) -> FewShotOutput:
        b, k = cues.prototypes.shape[:2]
        feats = cues.features
        # BAM's code computes the Gram matrix on layer2 after it is resized to layer3 (a no-op for
        # ResNet; 60 -> 30 for VGG).
        size3 = feats.query_mid.shape[-2:]
        est = gram_distance(
            resize(feats.query_low, size3).repeat_interleave(k, dim=0),
            resize(feats.support_low.flatten(0, 1), size3),
        ).view(b, k)

        w = self.shot_weights(est)
        est = (w * est).sum(dim=1)
        prior = (w.view(b, k, 1, 1, 1) * cues.priors).sum(dim=1)
        proto = (w.view(b, k, 1, 1, 1) * cues.prototypes).sum(dim=1)

        meta_out = self.meta_logits(cues.query_feat, proto, prior)

        base_out = self.base_logits(inputs.query_img)
        base_out = resize(base_out, meta_out.shape[-2:])
        final = self.ensemble(meta_out, base_out, est, inputs.class_idx)

        size = inputs.query_img.shape[-2:]
        final = resize(final, size)
        if inputs.query_mask is None:
            return FewShotOutput(logits=final)
        losses = {
            "main": cross_entropy(final, inputs.query_mask),
            "aux_meta": cross_entropy(meta_out, inputs.query_mask),
        }
        loss = losses["main"] + self.aux_meta_weight * losses["aux_meta"]
        if inputs.query_base_label is not None:  # no gradient: logged for parity with BAM's total loss
            losses["aux_base"] = cross_entropy(base_out, inputs.query_base_label)
            loss = loss + self.aux_base_weight * losses["aux_base"]
        return FewShotOutput(logits=final, loss=loss, losses=losses)


def build_bam(
    backbone: Backbone,
    *,
    shot: int,
    base_learner: PSPNet | str | Path,
    fold: FoldSpec | None = None,
    **options: Any,
) -> BAM:
    """The method table's factory: BAM from a loaded stage-1 PSPNet or from the path of its checkpoint.

    The meta branch always starts from the base learner's backbone (stage-1 weights, as in BAM);
    ``backbone`` only names the architecture, which must match the base learner's. A path needs the
    run's ``fold`` (a :class:`~svfseg.data.fold.FoldSpec`) so the checkpoint can be checked against it.

    Args:
        options: :class:`BAM` keywords (``reduce_dim``, ``aux_meta_weight``, ``aux_base_weight``,
            ``kshot_hidden``).
    """
    arch = (getattr(backbone, "name", None), getattr(backbone, "width_mult", None))
    if isinstance(base_learner, (str, Path)):
        if fold is None:
            raise ValueError(
                "build_model('bam', ..., base_learner=<path>) also needs fold=FoldSpec(dataset, fold) to "
                f"check the checkpoint {base_learner} against the run"
            )
        base_learner = load_base_learner(
            base_learner, backbone_name=str(arch[0]), fold=fold, width_mult=float(arch[1] or 1.0)
        )
    elif not isinstance(base_learner, PSPNet):
        raise TypeError(
            f"base_learner must be a PSPNet or the path of its checkpoint, got {type(base_learner).__name__}"
        )
    psp_arch = (base_learner.backbone.name, base_learner.backbone.width_mult)
    if arch != psp_arch:
        raise ValueError(
            f"backbone {arch[0]} (width_mult={arch[1]}) does not match the base learner's backbone "
            f"{psp_arch[0]} (width_mult={psp_arch[1]}): BAM's meta branch is a copy of the base learner's "
            "backbone, so the run's backbone setting must name the same architecture"
        )
    if backbone is not base_learner.backbone:
        log.info(
            "BAM: the meta branch copies the base learner's %s backbone; the given one is not used", arch[0]
        )
    return BAM(base_learner, shot=shot, **options)


def bam_backbone_problem(backbone_name: str) -> str | None:
    """Why BAM cannot run on the backbone ``backbone_name`` (None: it can); config checks name it early."""
    if backbone_name in VIT_MODELS:
        return BAM_ON_VIT
    if backbone_name == TIMM_CNN:
        return BAM_ON_TIMM_CNN
    return None


def bam_from_run(
    backbone: Mapping[str, Any],
    *,
    fold: FoldSpec,
    load_pretrained: bool = True,
    base_learner: str | Path | None = None,
    **options: Any,
) -> BAM:
    """BAM of a run: on its stage-1 PSPNet, read from ``base_learner`` and checked against the run's fold.

    Only the backbone's ``name`` and ``width_mult`` count: the meta branch is a copy of the base learner's
    backbone. ``load_pretrained=False`` builds the same architecture without reading the file (a BAM
    checkpoint supplies every tensor next).
    """
    name = str(backbone["name"])
    width_mult = float(backbone.get("width_mult", 1.0))
    problem = bam_backbone_problem(name)
    if problem is not None:
        raise ValueError(problem)
    num_classes = fold.num_base_labels
    if load_pretrained:
        if base_learner is None:
            raise ValueError("method.base_learner is null: BAM needs the stage-1 PSPNet checkpoint")
        pspnet = load_base_learner(base_learner, backbone_name=name, fold=fold, width_mult=width_mult)
    else:  # weights come from a BAM checkpoint next
        pspnet = PSPNet(backbone_shell(name, width_mult), num_classes=num_classes)
    return build_bam(pspnet.backbone, shot=fold.shot, base_learner=pspnet, **options)
