"""The common skeleton of every fine-tune strategy: freeze, select, switch BN policy, group for SGD.

A strategy only decides *which backbone parameters train* (and, for SVF, converts layers first). The
rest is shared so that every strategy obeys the same invariants:

* the backbone and ``model.frozen_modules()`` are frozen, then exactly the selection is unfrozen;
* ``model.backbone_trainable`` is True iff something in the backbone trains (else it runs under no_grad);
* ``model.frozen_bn`` follows the strategy (True except for ``bn``) and is applied at once;
* ``checkpointing``: ``model.checkpointed_stages`` lists the stages that backward passes through (from
  the first stage with a trainable parameter on); their activations are recomputed in backward instead
  of kept (``torch.utils.checkpoint``), trading about one more forward of those stages for memory;
* groups: ``head`` (lr_mult 1.0) and one ``backbone.<stage>`` group per stage with trainable parameters
  (lr_mult ``backbone_lr_mult``); frozen parameters are in no group, none is in two groups, and every
  trainable parameter of the model is in one (checked, because a silent miss never trains).
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

from torch import nn

from svfseg.finetune.options import DEFAULT_BACKBONE_LR_MULT, parse_flag, parse_lr_mult
from svfseg.methods.base import FewShotModel

log = logging.getLogger(__name__)

NamedParams = list[tuple[str, nn.Parameter]]
ParamGroup = dict[str, Any]


def backbone_stages(model: nn.Module) -> tuple[str, ...]:
    """Stage names of ``model.backbone``; explains what is missing when the model breaks the contract."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(
            f"{type(model).__name__} has no nn.Module attribute 'backbone': fine-tune strategies need a "
            "FewShotModel (svfseg.methods.base) whose backbone has stages layer0..layer4"
        )
    stages = tuple(getattr(backbone, "stage_names", ()))
    missing = [s for s in stages or ("stage_names",) if not isinstance(getattr(backbone, s, None), nn.Module)]
    if not stages or missing:
        raise TypeError(
            f"backbone {type(backbone).__name__} breaks the Backbone contract: missing {missing}; build it "
            "with svfseg.backbones.build_backbone"
        )
    return stages


def backward_stages(model: nn.Module) -> tuple[str, ...]:
    """Stages that backward passes through: from the first one holding a trainable parameter to the last."""
    stages = backbone_stages(model)
    trains = [any(p.requires_grad for p in getattr(model.backbone, s).parameters()) for s in stages]
    return stages[trains.index(True) :] if any(trains) else ()


def build_param_groups(model: FewShotModel, backbone_lr_mult: float) -> list[ParamGroup]:
    """``head`` group plus one group per backbone stage, trainable parameters only."""
    groups: list[ParamGroup] = []
    head = [p for _, p in model.head_named_parameters() if p.requires_grad]
    if head:
        groups.append({"params": head, "name": "head", "lr_mult": 1.0})
    for stage in backbone_stages(model):
        params = [p for p in getattr(model.backbone, stage).parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "name": f"backbone.{stage}", "lr_mult": backbone_lr_mult})
    return groups


def check_param_groups(model: nn.Module, groups: list[ParamGroup]) -> None:
    """Every trainable parameter in exactly one group, no frozen one anywhere."""
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[int, str] = {}
    for group in groups:
        for p in group["params"]:
            name = names.get(id(p), "<not a model parameter>")
            if not p.requires_grad:
                raise RuntimeError(f"frozen parameter {name} is in optimizer group {group['name']}")
            if id(p) in seen:
                raise RuntimeError(f"parameter {name} is in groups {seen[id(p)]} and {group['name']}")
            seen[id(p)] = group["name"]
    orphans = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if orphans:
        raise RuntimeError(
            f"trainable parameters outside every optimizer group (they would never train): {orphans[:10]}; "
            "a parameter outside backbone stages and head_named_parameters() breaks the FewShotModel contract"
        )


def _set_requires_grad(params: Iterable[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


class FinetuneStrategy(ABC):
    """Base of all strategies; subclasses implement :meth:`select` (and optionally :meth:`prepare`).

    Args:
        backbone_lr_mult: lr multiplier of the backbone groups (head: 1.0). Default 0.1, as in the
            SVF repo (LR/10 for layer2-4).
        checkpointing: activation checkpointing of the backbone stages that backward passes through.
    """

    name: ClassVar[str]
    frozen_bn: ClassVar[bool] = True  # BN layers of the backbone stay in eval mode during training

    def __init__(
        self, *, backbone_lr_mult: float = DEFAULT_BACKBONE_LR_MULT, checkpointing: bool = False
    ) -> None:
        self.backbone_lr_mult = parse_lr_mult(backbone_lr_mult)
        self.checkpointing = parse_flag(checkpointing, "checkpointing")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Option names the strategy accepts (its keyword-only constructor arguments)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)

    def options(self) -> dict[str, Any]:
        """The validated options, for logs and run records."""
        return {"backbone_lr_mult": self.backbone_lr_mult, "checkpointing": self.checkpointing}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({args})"

    def prepare(self, model: FewShotModel, *, from_checkpoint: bool = False) -> None:
        """Structural changes before selection (SVF converts convs here); none by default.

        ``from_checkpoint``: a state dict fills the model next, so no weight-derived work is needed
        (SVF builds its layers from shapes, with no SVD).
        """
        return None

    @abstractmethod
    def select(self, model: FewShotModel) -> NamedParams:
        """Backbone parameters (qualified names relative to the backbone) this strategy trains."""

    def apply(self, model: FewShotModel, *, from_checkpoint: bool = False) -> list[ParamGroup]:
        """Freeze, convert, unfreeze the selection, set the BN policy; returns optimizer param groups.

        ``from_checkpoint=True`` when a checkpoint's state dict is loaded right after (see ``prepare``).
        """
        backbone_stages(model)
        self.prepare(model, from_checkpoint=from_checkpoint)
        _set_requires_grad(model.backbone.parameters(), False)
        for module in model.frozen_modules():
            _set_requires_grad(module.parameters(), False)
        selected = self.select(model)
        _set_requires_grad((p for _, p in selected), True)
        model.backbone_trainable = bool(selected)
        model.checkpointed_stages = backward_stages(model) if self.checkpointing else ()
        model.frozen_bn = self.frozen_bn
        model.train(model.training)  # re-applies the BN policy now, not only at the next .train()
        groups = build_param_groups(model, self.backbone_lr_mult)
        check_param_groups(model, groups)
        log.info(
            "fine-tune %r: %s",
            self,
            ", ".join(f"{g['name']}={sum(p.numel() for p in g['params']):,}" for g in groups),
        )
        return groups
