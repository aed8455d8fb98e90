"""One log line per epoch, for runs nobody watches: the train loss, the validation metrics, the time.

The loss is summed on the device over the epoch and read back once at its end (no per-step host sync).
The line goes through Python logging, so Hydra writes it to the run's ``train.log`` and to the console.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

from svfseg.lightning.progress import EpochTimed, epochs_total

log = logging.getLogger("svfseg.train")


class EpochSummary(EpochTimed):
    """``epoch 3/200: train loss 0.4123, val mIoU 41.20, FB-IoU 60.15 (125 steps, 312 s)``."""

    def __init__(self) -> None:
        super().__init__()
        self._loss_sum: torch.Tensor | None = None
        self._steps = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._loss_sum, self._steps = None, 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._steps += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        parts = []
        if self._loss_sum is not None and self._steps:
            parts.append(f"train loss {float(self._loss_sum) / self._steps:.4f}")
        metrics = trainer.callback_metrics
        if "val/miou" in metrics:
            parts.append(f"val mIoU {100 * float(metrics['val/miou']):.2f}")
        if "val/fbiou" in metrics:
            parts.append(f"FB-IoU {100 * float(metrics['val/fbiou']):.2f}")
        seconds = self._clock.elapsed()
        resumed = f", resumed at batch {self._clock.first_batch + 1}" if self._clock.first_batch else ""
        log.info(
            "epoch %d/%s: %s (%d steps, %.0f s%s)",
            trainer.current_epoch + 1,
            epochs_total(trainer),
            ", ".join(parts) or "no metrics",
            self._steps,
            seconds,
            resumed,
        )
