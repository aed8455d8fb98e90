"""The contract between few-shot methods, fine-tune strategies and the LightningModule.

Every method (baseline, PFENet, BAM) subclasses :class:`FewShotModel`. A fine-tune strategy only
touches what this class exposes: ``backbone`` (stages ``layer0``..``layer4``), ``frozen_modules()``
(parts that never train, e.g. BAM's base learner), and the two switches ``backbone_trainable`` and
``frozen_bn``. Keeping the contract here means a new method gets every strategy for free.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from svfseg.backbones.base import Backbone


@dataclass
class FewShotOutput:
    """What a method returns: logits at input resolution and, when a target is given, the loss.

    ``losses`` holds the named terms that sum to ``loss`` (e.g. ``main``, ``aux``, ``base``) so they
    can be logged separately.
    """

    logits: Tensor
    loss: Tensor | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)


def set_batchnorm_eval(module: nn.Module) -> int:
    """Put every BatchNorm layer under ``module`` in eval mode; returns how many were switched."""
    count = 0
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
            count += 1
    return count


class FewShotModel(nn.Module):
    """Base class of every few-shot segmentation method.

    Subclasses set ``self.backbone`` and implement :meth:`forward` (the built-in methods get it from
    ``components.EpisodeMethod`` and write only their head). The forward signature is shared by
    all methods so the LightningModule needs no per-method code::

        forward(query_img (B,3,H,W), support_img (B,K,3,H,W), support_mask (B,K,H,W),
                query_mask (B,H,W) | None, class_idx (B,) | None, query_base_label (B,H,W) | None)
            -> FewShotOutput

    Masks hold {0, 1, 255}; 255 is ignored.
    """

    backbone: nn.Module

    def __init__(self) -> None:
        super().__init__()
        # Set by the fine-tune strategy. False: the backbone runs under no_grad (freeze).
        self.backbone_trainable: bool = False
        # True: backbone BN layers stay in eval mode (running stats never move) across .train() calls.
        self.frozen_bn: bool = True
        # Set by the strategy's ``checkpointing`` option: stages whose activations backward recomputes.
        self.checkpointed_stages: tuple[str, ...] = ()

    def frozen_modules(self) -> list[nn.Module]:
        """Modules outside the backbone that never train and always run in eval mode."""
        return []

    def head_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters of the method's own head: everything but the backbone and frozen modules."""
        excluded = {id(p) for p in self.backbone.parameters()}
        for m in self.frozen_modules():
            excluded.update(id(p) for p in m.parameters())
        for name, p in self.named_parameters():
            if id(p) not in excluded:
                yield name, p

    def backbone_grad(self) -> torch.autograd.grad_mode.set_grad_enabled:
        """Context for backbone calls: gradients only when the strategy trains the backbone."""
        return torch.set_grad_enabled(torch.is_grad_enabled() and self.backbone_trainable)

    def train(self, mode: bool = True) -> FewShotModel:
        """Switch modes, then re-apply the BN policy so no ``.train()`` call can unfreeze BN."""
        super().train(mode)
        if mode:
            if self.frozen_bn:
                set_batchnorm_eval(self.backbone)
            for m in self.frozen_modules():
                m.eval()
        return self


def find_backbone(module: nn.Module) -> nn.Module:
    """The fine-tuned backbone inside a LightningModule, a few-shot model, or the backbone itself.

    For BAM this is the meta branch's backbone (the one SVF converts), not the frozen base learner's.
    """
    current: nn.Module = module
    for _ in range(3):
        if isinstance(current, Backbone):
            return current
        child = getattr(current, "model", None)
        if isinstance(child, nn.Module) and not isinstance(getattr(current, "backbone", None), nn.Module):
            current = child
            continue
        backbone = getattr(current, "backbone", None)
        if isinstance(backbone, nn.Module):
            return backbone
        break
    raise TypeError(
        f"cannot find a backbone in {type(module).__name__}: pass a FewShotSegModule, a FewShotModel "
        "(attribute 'backbone') or a svfseg Backbone"
    )
