"""A progress bar that reads logged values back from the device every N steps, not every step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar


class SparseMetricsProgressBar(RichProgressBar):
    """Lightning's Rich bar, showing the logged values ``show`` refreshed every ``metrics_every`` steps.

    A value logged with ``prog_bar=True`` is converted to a Python number after every batch (a host
    sync on a GPU). svfseg logs its values without ``prog_bar``; this bar still advances each batch and
    reads the values named in ``show`` every ``metrics_every`` optimizer steps, at the last batch of an
    epoch and outside training.
    """

    def __init__(
        self, metrics_every: int = 10, show: Sequence[str] = ("train/loss", "val/miou"), **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if int(metrics_every) < 1:
            raise ValueError(f"progress_bar.metrics_every must be >= 1, got {metrics_every}")
        self.metrics_every = int(metrics_every)
        self.show = tuple(show)
        self._shown: dict[str, float] = {}
        self._shown_step: int | None = None

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        step = trainer.global_step
        due = (
            self._shown_step is None
            or not trainer.training
            or trainer.is_last_batch
            or step - self._shown_step >= self.metrics_every
        )
        if due:
            logged = trainer.callback_metrics
            self._shown = {k: float(logged[k]) for k in self.show if k in logged}
            self._shown_step = step
        return {**metrics, **self._shown}
