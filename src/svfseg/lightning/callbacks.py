"""Callbacks: fine-tune strategy injection at fit start."""

from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl

from svfseg.finetune import build_strategy


class FinetuneCallback(pl.Callback):
    """Applies a fine-tune strategy (freeze, full, part, bn, svf, ...) when fitting starts.

    It runs in ``setup('fit')``: after the model is built but before the checkpoint is restored, the
    model is wrapped in DDP and the optimizer is created. SVF therefore converts the backbone first, a
    resumed checkpoint's U/S/V load into the converted layers, and the optimizer sees the final
    parameters.

    Args:
        name, options: the strategy and its options (``conf/finetune/*.yaml``).
        restoring: the fit resumes from a checkpoint, whose state dict fills every tensor right after
            setup; SVF then builds its layers from shapes and runs no SVD.
    """

    def __init__(self, name: str, *, restoring: bool = False, **options: Any) -> None:
        super().__init__()
        self.spec: dict[str, Any] = {"name": name, **copy.deepcopy(options)}
        self.restoring = restoring
        build_strategy(name, **options)  # validate the options now, before hours of data loading

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.apply_finetune(self.spec, from_checkpoint=self.restoring)
