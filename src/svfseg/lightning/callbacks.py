"""Callbacks: fine-tune strategy injection at fit start."""

from __future__ import annotations

import pytorch_lightning as pl

from svfseg.finetune import FinetuneStrategy


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
