"""Resumable training: ``last.ckpt`` every N steps and every epoch, finite weights only, per-batch seeds.

Why not a second ``ModelCheckpoint(save_last=True)``: two of them writing ``last.ckpt`` clash (each one's
version counter turns the other's file into ``last-v1.ckpt``), a step saver must not monitor
``val/miou`` (it does not exist mid-epoch), and since Lightning 2.6 a monitored ``ModelCheckpoint``
writes ``last.ckpt`` only in epochs where the best improved. So the ``best`` saver keeps
``save_last=False`` and :class:`LastCheckpoint` alone owns ``last.ckpt``.

:class:`BestCheckpoint` is Lightning's ``ModelCheckpoint`` that also writes the few-KB SVF artifact
(``svf_state_dict`` of the fine-tuned backbone) next to every checkpoint it saves, as adapter libraries
ship their adapters: ``best.ckpt`` -> ``best.svf.pt``.

A resume from ``last.ckpt`` is exact mid-epoch: Lightning restores the loops, optimizer and lr schedule,
:class:`~svfseg.data.datamodule.FewShotDataModule` restores the sampler position, and :class:`StepSeed`
makes each batch's dropout masks a function of (seed, epoch, batch, rank) instead of the global RNG
history (which a restarted process does not share).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint
from torch import Tensor

from svfseg.data.samplers import step_seed
from svfseg.files import atomic_write
from svfseg.svf import svf_layers, svf_state_dict

log = logging.getLogger(__name__)


def first_non_finite(state_dict: dict[str, Any]) -> str | None:
    """Name of the first floating tensor holding a NaN or inf, or None."""
    for name, value in state_dict.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


class LastCheckpoint(Checkpoint):
    """Writes ``<dirpath>/<filename>.ckpt`` every ``every_n_train_steps`` optimizer steps and after every epoch.

    The epoch save happens in ``on_train_epoch_end``, i.e. after the epoch's validation, so a resume
    neither repeats nor skips it. The step save is skipped on an epoch's last batch: a run killed during
    that epoch's validation then resumes from the previous step save and validates again, instead of
    Lightning moving on to the next epoch without validating. Writes are atomic (Lightning writes a
    temporary file and renames it), so a kill mid-write keeps the previous file.

    Every checkpoint of the run (``best.ckpt`` too) passes :meth:`on_save_checkpoint`, which refuses
    non-finite weights: the file on disk stays the last good state.

    Args:
        dirpath: folder of the checkpoint.
        every_n_train_steps: step interval (>= 1), or 0 / None for epoch saves only.
        filename: file name without ``.ckpt``; ``train.py ckpt_path=last`` reads ``last``.
    """

    def __init__(
        self, dirpath: str | Path, every_n_train_steps: int | None = 500, filename: str = "last"
    ) -> None:
        super().__init__()
        steps = 0 if every_n_train_steps is None else every_n_train_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(
                f"callbacks.last_checkpoint.every_n_train_steps={every_n_train_steps!r} is invalid: "
                "expected an integer >= 1, or 0 / null to save last.ckpt only at epoch ends"
            )
        if not filename or "/" in filename:
            raise ValueError(f"callbacks.last_checkpoint.filename={filename!r} must be a plain file name")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = steps
        self.filename = filename
        self.last_model_path = ""
        self._last_saved_step = -1

    @property
    def path(self) -> Path:
        return self.dirpath / f"{self.filename}.ckpt"

    def save(self, trainer: pl.Trainer) -> None:
        """Write the checkpoint (every rank calls this; Lightning writes on rank 0 only)."""
        if trainer.sanity_checking or bool(trainer.fast_dev_run):
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state, for resume
        self.last_model_path = str(self.path)
        self._last_saved_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = self.every_n_train_steps
        step = trainer.global_step
        if n < 1 or step == 0 or step % n != 0 or step == self._last_saved_step:
            return  # also: accumulating batches keep global_step, saved once
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch save follows right after validation
        self.save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        bad = first_non_finite(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise FloatingPointError(
                f"refusing to write a checkpoint at global step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}): weight {bad!r} is NaN or inf. The files in {self.dirpath} "
                "keep the last good state; lower optim.lr or check the data of the last steps."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"last_model_path": self.last_model_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_model_path = str(state_dict.get("last_model_path", ""))


def svf_artifact_path(checkpoint_path: str | Path) -> Path:
    """Where the SVF artifact of a checkpoint lives: ``.../best.ckpt`` -> ``.../best.svf.pt``."""
    path = Path(checkpoint_path)
    return path.with_name(f"{path.stem}.svf.pt")


def write_svf_artifact(pl_module: pl.LightningModule, checkpoint_path: str | Path) -> Path | None:
    """Write ``svf_state_dict`` of the module's backbone next to ``checkpoint_path``; None without SVF.

    The artifact holds the trained SVF tensors of ``model.backbone`` (BAM: the meta branch's backbone)
    and the fingerprint of the weights they were converted from; restore it with
    ``load_svf_state_dict(model.backbone, torch.load(path, weights_only=True))`` on a backbone converted
    from the same pretrained file with the same options.
    """
    backbone = getattr(getattr(pl_module, "model", None), "backbone", None)
    if not isinstance(backbone, torch.nn.Module) or next(svf_layers(backbone), None) is None:
        return None
    state = svf_state_dict(backbone)
    return atomic_write(svf_artifact_path(checkpoint_path), lambda tmp: torch.save(state, tmp))


def load_checkpoint_dict(path: str | Path) -> dict[str, Any]:
    """Read an svfseg checkpoint safely (weights_only, memory-mapped) with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path} does not exist")
    try:
        # memory-mapped: the callers check the metadata, and the weights are read once, by the loader
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {err}") from err
    if not isinstance(checkpoint, dict) or "svfseg" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(
            f"{path} was not written by svfseg's train.py (no 'svfseg'/'state_dict' entries); "
            "a BAM base learner (pspnet.pt) is read by method.base_learner, not by eval.py"
        )
    return checkpoint


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes the SVF artifact next to each checkpoint it saves (rank 0 only)."""

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero and trainer.lightning_module is not None:
            written = write_svf_artifact(trainer.lightning_module, filepath)
            if written is not None:
                log.debug("wrote the SVF artifact %s", written)

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            svf_artifact_path(filepath).unlink(missing_ok=True)


class StepSeed(pl.Callback):
    """Seeds torch before each training batch from ``(seed, epoch, batch index, rank)``.

    Dropout then draws the same masks in a resumed run as in an uninterrupted one (the global RNG state of
    a fresh process differs: model building and loader iterators consume it), and different masks on
    each rank under DDP. Evaluation is unaffected (no dropout in eval mode).
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(
                f"callbacks.step_seed.seed={seed!r} must be an integer >= 0 (default: ${{seed}})"
            )
        self.seed = seed

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        torch.manual_seed(step_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))


__all__ = [
    "BestCheckpoint",
    "LastCheckpoint",
    "StepSeed",
    "first_non_finite",
    "load_checkpoint_dict",
    "svf_artifact_path",
    "write_svf_artifact",
]
