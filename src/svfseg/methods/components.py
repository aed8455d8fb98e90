"""Pieces shared by the baseline, PFENet and BAM.

* features: mid-level = cat[layer3, layer2 resized to layer3] (1536 ch R50 / 768 VGG); high-level = layer4,
  where the support's layer4 runs on its masked layer3 map;
* masked average pooling (prototype), the training-free prior mask, the per-shot support cues built from
  both, ASPP, the 1x1 reduction block, the classifier block and the CE loss.

All K supports of a batch go through the backbone together with the queries (B + B*K images), so a
5-shot step costs one backbone pass rather than six.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from svfseg.labels import IGNORE_INDEX
from svfseg.methods.base import FewShotModel, FewShotOutput

PROTO_EPS = 0.0005  # the PFENet/BAM/SVF repos' Σ(f·m) / (Σm + 0.0005)
PRIOR_EPS = 1e-7
# Largest (support pixels x query pixels) similarity block the prior materialises at once: 2^26 floats
# (256 MiB). The PFENet/BAM/SVF repos' dense prior needs N*S*Q floats (7 GB: 5-shot, batch 8, 641 px).
PRIOR_BLOCK_ELEMENTS = 1 << 26


def resize(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear resize with align_corners=True, the PFENet/BAM/SVF repos' convention."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def mid_channels(backbone: nn.Module) -> int:
    """Channels of cat[layer3, layer2]: 1536 for ResNet-50, 768 for VGG-16."""
    return int(backbone.channels["layer3"]) + int(backbone.channels["layer2"])


# ----------------------------------------------------------------------------- backbone features
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


def run_stage(backbone: nn.Module, name: str, x: Tensor, checkpointed: Collection[str] = ()) -> Tensor:
    """``backbone.<name>(x)``, with activation checkpointing when ``name`` is listed and autograd records.

    Non-reentrant checkpointing recomputes the stage in backward; the recomputation gives the same values
    because backbone BN is in eval mode and the backbone has no dropout. (With BN in train mode the
    recomputation would update the running statistics a second time, so ``finetune=bn`` refuses it.)
    """
    stage = getattr(backbone, name)
    if name in checkpointed and torch.is_grad_enabled():
        return checkpoint(stage, x, use_reentrant=False)
    return stage(x)


def extract_features(
    backbone: nn.Module,
    query_img: Tensor,
    support_img: Tensor,
    support_mask: Tensor,
    checkpointed: Collection[str] = (),
) -> Features:
    """Run the backbone the PFENet way on queries and supports together.

    Args:
        query_img: (B, 3, H, W); support_img: (B, K, 3, H, W); support_mask: (B, K, H, W) in {0, 1, 255}
            (255 counts as background, as in the BAM/SVF repos).

    ``checkpointed``: stages run with activation checkpointing (``model.checkpointed_stages``).

    Call it inside ``model.backbone_grad()`` so a frozen backbone runs without autograd. Batching the
    queries with the supports gives the same features as the BAM/SVF repos' separate calls when BN is in
    eval mode (``frozen_bn``, the BAM/SVF setting); with BN in train mode the batch statistics are
    pooled over queries and supports instead of per call.
    """
    b, k = support_img.shape[:2]
    images = torch.cat([query_img, support_img.flatten(0, 1)], dim=0)
    x = images
    for name in ("layer0", "layer1", "layer2"):
        x = run_stage(backbone, name, x, checkpointed)
    low = x
    mid3 = run_stage(backbone, "layer3", low, checkpointed)
    size3 = mid3.shape[-2:]
    mid = torch.cat([mid3, resize(low, size3)], dim=1)

    fg = (support_mask.flatten(0, 1) == 1).unsqueeze(1).to(mid3.dtype)
    mask3 = resize(fg, size3)
    high = run_stage(backbone, "layer4", torch.cat([mid3[:b], mid3[b:] * mask3], dim=0), checkpointed)
    s_high = high[b:] * resize(fg, high.shape[-2:])
    return Features(
        query_mid=mid[:b],
        support_mid=mid[b:].unflatten(0, (b, k)),
        support_mask_mid=mask3.unflatten(0, (b, k)),
        query_high=high[:b],
        support_high_masked=s_high.unflatten(0, (b, k)),
        query_low=low[:b],
        support_low=low[b:].unflatten(0, (b, k)),
    )


# ----------------------------------------------------------------------------- prototype and prior
def masked_average_pool(feat: Tensor, mask: Tensor) -> Tensor:
    """Prototype (N, C, 1, 1) = Σ_xy f·m / (Σ_xy m + 0.0005); ``mask`` is resized to ``feat`` if needed."""
    mask = resize(mask, feat.shape[-2:])
    area = mask.sum(dim=(2, 3), keepdim=True) + PROTO_EPS
    return (feat * mask).sum(dim=(2, 3), keepdim=True) / area


def _best_support_pixel(
    q: Tensor, s: Tensor, q_norm: Tensor, s_norm: Tensor, eps: float, block: int
) -> tuple[Tensor, Tensor]:
    """Max cosine over support pixels and its index, a block of support pixels at a time (no autograd)."""
    best = idx = None
    for start in range(0, s.shape[1], block):
        stop = start + block
        cos = torch.bmm(s[:, start:stop], q).div_(torch.bmm(s_norm[:, start:stop], q_norm).add_(eps))
        val, arg = cos.max(dim=1)
        if best is None:
            best, idx = val, arg
        else:  # strict ">" keeps the first maximum, as a single max over all pixels does
            better = val > best
            best = torch.where(better, val, best)
            idx = torch.where(better, arg + start, idx)
    return best, idx


def prior_mask(
    query_high: Tensor,
    support_high: Tensor,
    eps: float = PRIOR_EPS,
    *,
    block_elements: int = PRIOR_BLOCK_ELEMENTS,
) -> Tensor:
    """Training-free prior (N, 1, h, w): max cosine similarity to any support pixel, min-max normalised.

    cos(i, j) = <s_i, q_j> / (|s_i| |q_j| + eps), max over support pixels i, then (x - min) / (max - min + eps)
    over the query pixels of each image (PFENet). The similarity matrix is scanned in blocks of at most
    ``block_elements`` per image batch, so memory stays bounded; when the inputs need gradients (SVF
    trains the backbone), the winning cosine of each query pixel is recomputed with autograd, which gives
    exactly the gradient of the dense max (it flows only through the argmax) without storing the matrix.
    Computed in at least float32, even under autocast: eps=1e-7 and the min-max are not half-precision safe.

    Args:
        query_high: (N, C, h, w) query layer4 features.
        support_high: (N, C, hs, ws) support layer4 features, already multiplied by the support mask.
    """
    n, c, h, w = query_high.shape
    dtype = torch.promote_types(query_high.dtype, torch.float32)
    with torch.autocast(query_high.device.type, enabled=False):
        q = query_high.to(dtype).flatten(2)  # (N, C, Q)
        s = support_high.to(dtype).flatten(2).transpose(1, 2)  # (N, S, C)
        q_norm = q.norm(dim=1, keepdim=True)  # (N, 1, Q)
        s_norm = s.norm(dim=2, keepdim=True)  # (N, S, 1)
        block = max(1, block_elements // max(1, n * q.shape[2]))
        with torch.no_grad():
            sim, idx = _best_support_pixel(q, s, q_norm, s_norm, eps, block)
        if torch.is_grad_enabled() and (q.requires_grad or s.requires_grad):
            s_best = s.gather(1, idx.unsqueeze(-1).expand(-1, -1, c))  # (N, Q, C)
            dot = (s_best * q.transpose(1, 2)).sum(dim=2)
            sim = dot / (s_norm.squeeze(2).gather(1, idx) * q_norm.squeeze(1) + eps)
        low = sim.min(dim=1, keepdim=True).values
        high = sim.max(dim=1, keepdim=True).values
        sim = (sim - low) / (high - low + eps)
    return sim.view(n, 1, h, w).to(query_high.dtype)


@dataclass
class EpisodeCues:
    """What every method builds from the backbone features before its own head."""

    features: Features
    query_feat: Tensor  # (B, D, h, w): down_query(query_mid)
    prototypes: Tensor  # (B, K, D, 1, 1): masked average pool of down_supp(support_mid), per shot
    priors: Tensor  # (B, K, 1, h, w): prior mask per shot, at layer3 size

    def shot_means(self) -> tuple[Tensor, Tensor]:
        """One prototype (B, D, 1, 1) and one prior (B, 1, h, w): the mean over shots (baseline, PFENet)."""
        return self.prototypes.mean(dim=1), self.priors.mean(dim=1)


@dataclass(frozen=True)
class EpisodeInputs:
    """What a method's head reads of the episode besides the cues (``forward``'s other arguments)."""

    query_img: Tensor
    query_mask: Tensor | None = None
    class_idx: Tensor | None = None
    query_base_label: Tensor | None = None


class EpisodeMethod(FewShotModel):
    """A method built on :func:`episode_cues`: the one ``forward`` of every method, heads in :meth:`decode`.

    Subclasses set ``backbone``, ``down_query`` and ``down_supp`` and implement :meth:`decode`, so the
    signature the LightningModule calls (see :class:`FewShotModel`) is written once.
    """

    def forward(
        self,
        query_img: Tensor,
        support_img: Tensor,
        support_mask: Tensor,
        query_mask: Tensor | None = None,
        class_idx: Tensor | None = None,
        query_base_label: Tensor | None = None,
    ) -> FewShotOutput:
        self.check_shots(support_img.shape[1])
        cues = episode_cues(self, query_img, support_img, support_mask)
        return self.decode(cues, EpisodeInputs(query_img, query_mask, class_idx, query_base_label))

    def check_shots(self, shots: int) -> None:
        """Refuse an episode with a number of supports the method was not built for (default: any)."""

    def decode(self, cues: EpisodeCues, inputs: EpisodeInputs) -> FewShotOutput:
        """The method's head: logits at ``inputs.query_img``'s size and, given a query mask, the loss."""
        raise NotImplementedError


def episode_cues(
    model: FewShotModel, query_img: Tensor, support_img: Tensor, support_mask: Tensor
) -> EpisodeCues:
    """Backbone (under ``model.backbone_grad()``), reduction, per-shot prototypes and priors.

    ``model`` needs ``backbone``, ``down_query`` and ``down_supp``. Shots are kept apart so each method
    combines them its own way (baseline and PFENet: mean; BAM: learned weights).
    """
    b, k = support_img.shape[:2]
    with model.backbone_grad():
        feats = extract_features(
            model.backbone, query_img, support_img, support_mask, model.checkpointed_stages
        )
    query_feat = model.down_query(feats.query_mid)
    supp_feat = model.down_supp(feats.support_mid.flatten(0, 1))
    protos = masked_average_pool(supp_feat, feats.support_mask_mid.flatten(0, 1))
    query_high = feats.query_high.repeat_interleave(k, dim=0)
    priors = resize(prior_mask(query_high, feats.support_high_masked.flatten(0, 1)), query_feat.shape[-2:])
    return EpisodeCues(
        features=feats,
        query_feat=query_feat,
        prototypes=protos.unflatten(0, (b, k)),
        priors=priors.unflatten(0, (b, k)),
    )


# ----------------------------------------------------------------------------- head blocks
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

    Output: 5 * ``out_channels`` channels (1280 for 256). Weights use ``kaiming_normal_`` with PyTorch's
    defaults (fan_in, gain sqrt(2)) and biases keep the default init, as the SVF repo's ``_init_weight``.
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
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool_branch(x).expand(-1, -1, *x.shape[-2:])
        return torch.cat([pooled, *(branch(x) for branch in self.branches)], dim=1)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """CE with ignore 255, logits resized (bilinear, align_corners) to the target size when needed."""
    logits = resize(logits, target.shape[-2:])
    return F.cross_entropy(logits, target.long(), ignore_index=IGNORE_INDEX)
