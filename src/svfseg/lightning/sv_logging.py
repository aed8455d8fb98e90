"""Logging callback: how fine-tuning moves the singular values of the SVF layers.

:class:`SingularValueChangeLogger` logs, per backbone stage, the relative change ``s / s0 - 1`` of every
singular value as a histogram (W&B, TensorBoard) and as summary scalars (``sv_change/<stage>_mean_abs``,
``..._mean``, ``..._max_abs``) that every logger, CSV included, records.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor

from svfseg.backbones.base import STAGE_NAMES
from svfseg.lightning.schedule import check_every, due
from svfseg.messages import ignore_sync_advice
from svfseg.methods.base import find_backbone
from svfseg.svf import svf_layers
from svfseg.svf.spectrum import stage_change_stats

log = logging.getLogger(__name__)


class SingularValueChangeLogger(pl.Callback):
    """Logs the per-stage distribution of ``s / s0 - 1`` over the SVF layers of the backbone.

    Runs at the end of every ``every_n_epochs``-th validation epoch. A model without SVF layers (finetune
    other than svf) is left alone, with one info message.
    """

    def __init__(self, every_n_epochs: int = 1, num_bins: int = 64, prefix: str = "sv_change") -> None:
        super().__init__()
        self.every_n_epochs = check_every(every_n_epochs)
        self.num_bins = int(num_bins)
        self.prefix = prefix
        self._reported_no_svf = False

    def stage_changes(self, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        """``{stage: flat float64 tensor of s / s0 - 1}`` in stage order; empty without SVF layers."""
        try:
            backbone = find_backbone(pl_module)
        except TypeError:
            backbone = pl_module
        if next(svf_layers(backbone), None) is None:
            return {}
        stats = stage_change_stats(backbone)
        order = [s for s in STAGE_NAMES if s in stats] + sorted(s for s in stats if s not in STAGE_NAMES)
        return {s: stats[s] for s in order if stats[s].numel() > 0}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not due(trainer, self.every_n_epochs):
            return
        changes = self.stage_changes(pl_module)
        if not changes:
            if not self._reported_no_svf:
                log.info("SingularValueChangeLogger: the model has no SVF layers; nothing to log")
                self._reported_no_svf = True
            return
        if trainer.world_size > 1:  # the weights DDP keeps equal give every rank the same values
            ignore_sync_advice(self.prefix)
        for stage, values in changes.items():
            summary = {
                "mean_abs": values.abs().mean(),
                "mean": values.mean(),
                "max_abs": values.abs().max(),
            }
            for name, value in summary.items():
                pl_module.log(f"{self.prefix}/{stage}_{name}", float(value), sync_dist=False)
        if trainer.is_global_zero:
            log_histograms(trainer, {f"{self.prefix}/{s}": v for s, v in changes.items()}, self.num_bins)


def log_histograms(trainer: pl.Trainer, values: dict[str, Tensor], num_bins: int = 64) -> None:
    """Send histograms to every attached logger that can show them (W&B, TensorBoard)."""
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb  # only when a W&B logger is attached: the import is slow and W&B is optional

            logger.log_metrics(
                {k: wandb.Histogram(v.numpy(), num_bins=num_bins) for k, v in values.items()}, step=step
            )
        elif isinstance(logger, TensorBoardLogger):
            for key, v in values.items():
                logger.experiment.add_histogram(key, v.numpy(), global_step=step)
