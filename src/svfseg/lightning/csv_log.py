"""A CSV logger whose ``metrics.csv`` survives a resume.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so a run resumed with
``ckpt_path=last`` lost its steps before the interruption, and Figure 2's curves (read from that file)
were drawn from the rest. :class:`ResumableCSVLogger` keeps the file and appends to it. Rows that the
interrupted process logged after the checkpoint it resumes from are dropped when training starts
(:class:`TrimLogsOnResume`), because the resumed run logs those steps again: the file then holds every
step once, as an uninterrupted run would.
"""

from __future__ import annotations

import csv
import os
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from svfseg.files import atomic_write


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's writer without the deletion at start: it continues an existing file's columns."""

    def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                header = next(csv.reader(handle), [])
            self.metrics_keys = sorted(header)

    def drop_rows_from(self, step: int) -> int:
        """Remove the rows logged at ``step`` or later (a resume logs them again); returns how many."""
        self.save()
        if not self._fs.isfile(self.metrics_file_path):
            return 0
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        kept = [row for row in rows if not row.get("step") or int(float(row["step"])) < step]
        if len(kept) == len(rows):
            return 0

        def write(tmp: Any) -> None:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=fields)
                writer.writeheader()
                writer.writerows(kept)

        atomic_write(self.metrics_file_path, write)
        return len(rows) - len(kept)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to the run's ``metrics.csv`` across resumes instead of deleting it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


class TrimLogsOnResume(pl.Callback):
    """At the start of a fit, drop the CSV rows of steps at or after the step it starts from.

    Lightning logs a training step with the number of optimizer steps done before it, and an epoch's
    validation with the steps done at its end; the checkpoint at global step ``g`` therefore holds every
    row with ``step < g``, plus the validation row at ``g`` when it is an epoch-end checkpoint (kept). A
    fit that starts from scratch over a run killed before its first checkpoint drops every row: it logs
    those steps again.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger) and os.path.isfile(logger.experiment.metrics_file_path):
                if trainer.ckpt_path is None:
                    step = 0
                else:
                    step = trainer.global_step + (
                        1 if trainer.fit_loop.epoch_loop.batch_progress.current.ready == 0 else 0
                    )
                logger.experiment.drop_rows_from(step)
