"""Progress for watched and unwatched runs; logged values are read back every N steps, not every step.

``build_progress_bar`` gives the Rich bar on a terminal and periodic log lines when stdout is redirected
(a cluster job's log file), where a live bar writes nothing useful.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar

log = logging.getLogger("svfseg.train")


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


class EpochClock:
    """When this process started the current epoch's batches, and at which batch index.

    A run resumed in the middle of an epoch starts at a later batch, and Lightning does not call
    ``on_train_epoch_start`` for the restored epoch: rates are measured over the batches this process
    ran, from its first one, so the time per batch and the time left stay right after a resume.
    """

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.start = 0.0
        self.first_batch = 0

    def reset(self) -> None:
        self.epoch = None

    def tick(self, epoch: int, batch_idx: int) -> None:
        """Call at the start of every training batch."""
        if epoch != self.epoch:
            self.epoch, self.start, self.first_batch = epoch, time.perf_counter(), batch_idx

    def elapsed(self) -> float:
        return time.perf_counter() - self.start if self.epoch is not None else 0.0


class EpochTimed(pl.Callback):
    """A callback whose ``_clock`` times each epoch's batches: the hooks both log-line writers share."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = EpochClock()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock.reset()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._clock.tick(trainer.current_epoch, batch_idx)


def epochs_total(trainer: pl.Trainer) -> int | str:
    """``max_epochs`` for "epoch 3/200", or "?" when the run has no epoch limit."""
    return trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"


class LineProgress(EpochTimed, ProgressBar):
    """Progress as log lines: every ``every_n_steps`` training batches and at the end of an epoch.

    ``train epoch 2/200: 150/526 batches (29%), train/loss 0.4123, 0.31 s/batch, 1 min 57 s left``.
    It replaces Lightning's bar (it is a ``ProgressBar``), so nothing draws on a redirected stdout.
    """

    def __init__(self, every_n_steps: int = 10, show: Sequence[str] = ("train/loss",)) -> None:
        super().__init__()
        if int(every_n_steps) < 1:
            raise ValueError(f"progress_bar.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self.show = tuple(show)
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        total = trainer.num_training_batches
        done = batch_idx + 1
        if not self._enabled or not trainer.is_global_zero:
            return
        if done % self.every_n_steps and done != total:
            return
        per = self._clock.elapsed() / max(done - self._clock.first_batch, 1)
        left = per * (total - done) if isinstance(total, int) else float("nan")
        logged = trainer.callback_metrics
        values = "".join(f", {k} {float(logged[k]):.4f}" for k in self.show if k in logged)
        share = f" ({100 * done / total:.0f}%)" if isinstance(total, int) and total else ""
        log.info(
            "train epoch %d/%s: %d/%s batches%s%s, %.2f s/batch, %s left",
            trainer.current_epoch + 1,
            epochs_total(trainer),
            done,
            total,
            share,
            values,
            per,
            _duration(left),
        )


def _duration(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else (f"{minutes} min {secs} s" if minutes else f"{secs} s")


def build_progress_bar(metrics_every: int = 10, force: str | None = None) -> ProgressBar:
    """The Rich bar on a terminal, log lines when stdout is not one (``force``: ``rich`` or ``lines``)."""
    mode = force or ("rich" if sys.stdout.isatty() else "lines")
    if mode not in ("rich", "lines"):
        raise ValueError(f"progress_bar.force={force!r} is invalid: choose rich, lines or null (auto)")
    if mode == "rich":
        return SparseMetricsProgressBar(metrics_every=metrics_every)
    return LineProgress(every_n_steps=metrics_every)
