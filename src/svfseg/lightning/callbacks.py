"""Callbacks: fine-tune strategy injection at fit start."""

from __future__ import annotations

import logging
import re

import pytorch_lightning as pl
from lightning_fabric.utilities.warnings import PossibleUserWarning
from torch import nn

from svfseg.finetune import FinetuneStrategy
from svfseg.messages import ignore_warning_once

log = logging.getLogger(__name__)


def modules_in_eval_when_training(module: nn.Module) -> int:
    """How many submodules stay in eval mode after ``module.train()`` (the modes are restored after).

    A few-shot model's ``train()`` keeps frozen BN and BAM's base learner in eval mode by design.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.train()
    count = sum(not m.training for m in module.modules())
    for m, training in modes:
        m.training = training
    return count


class FinetuneCallback(pl.Callback):
    """Injects the run's fine-tune strategy (freeze, full, part, bn, svf, ...) when fitting starts.

    It runs in ``setup('fit')``: after the model is built but before the checkpoint is restored, the
    model is wrapped in DDP and the optimizer is created. SVF therefore converts the backbone first, a
    resumed checkpoint's U/S/V load into the converted layers, and the optimizer sees the final
    parameters.

    Args:
        strategy: the run's strategy, built once with its spec (``RunSpec.strategy``).
        restoring: the fit resumes from a checkpoint, whose state dict fills every tensor right after
            setup; SVF then builds its layers from shapes and runs no SVD.
    """

    def __init__(self, strategy: FinetuneStrategy, *, restoring: bool = False) -> None:
        super().__init__()
        self.strategy = strategy
        self.restoring = restoring

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.apply_finetune(self.strategy, from_checkpoint=self.restoring)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Say once why modules are in eval mode, instead of Lightning's "may lead to unexpected behavior".

        Lightning warns about every module in eval mode when training starts. The strategy keeps the
        backbone's BN (and BAM's base learner) there on purpose, so exactly that count is logged as such
        and its warning silenced; any other count (a module left in eval mode by mistake) still warns.
        """
        expected = modules_in_eval_when_training(pl_module)
        if expected == 0:
            return
        pattern = re.escape(f"Found {expected} module(s) in eval mode at the start of training")
        ignore_warning_once(pattern, PossibleUserWarning)
        if trainer.is_global_zero:
            model = getattr(pl_module, "model", None)
            reasons = ["the backbone's frozen BN"] if getattr(model, "frozen_bn", False) else []
            if model is not None and hasattr(model, "frozen_modules") and list(model.frozen_modules()):
                reasons.append("the frozen base learner")
            log.info(
                "%d modules stay in eval mode while training, by design (%s)",
                expected,
                " and ".join(reasons) or "the method's choice",
            )
