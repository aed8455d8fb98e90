"""Resumable training: ``last.ckpt`` every N steps and every epoch, finite weights only, per-batch seeds.

Why not a second ``ModelCheckpoint(save_last=True)``: two of them writing ``last.ckpt`` clash (each one's
version counter turns the other's file into ``last-v1.ckpt``), a step saver must not monitor
``val/miou`` (it does not exist mid-epoch), and since Lightning 2.6 a monitored ``ModelCheckpoint``
writes ``last.ckpt`` only in epochs where the best improved. So the ``best`` saver keeps
``save_last=False`` and :class:`LastCheckpoint` alone owns ``last.ckpt``.

:class:`BestCheckpoint` is Lightning's ``ModelCheckpoint`` that also writes the small adapter artifact
(``adapter_state_dict`` of the fine-tuned backbone: every tensor the strategy trains, e.g. the singular
values and the BN affine of ``svf_bn``) next to every checkpoint it saves, as adapter libraries ship
their adapters: ``best.ckpt`` -> ``best.svf.pt``. When the trained tensors exceed half of the backbone's
parameter count (``full``, or ``part`` over most of the backbone) no artifact is written and a warning
says that the checkpoint is the complete record; a frozen backbone (``freeze``) writes none either.

A resume from ``last.ckpt`` is exact mid-epoch: Lightning restores the loops, optimizer and lr schedule,
:class:`~svfseg.data.datamodule.FewShotDataModule` restores the sampler position, and :class:`StepSeed`
makes each batch's dropout masks a function of (seed, epoch, batch, rank) instead of the global RNG
history (which a restarted process does not share).

Every checkpoint file is written by :class:`AtomicCheckpointIO`: in full to a temporary file in the
checkpoint's own folder, flushed, then renamed over the old one. Lightning's own writer puts the bytes in
a temporary file of the system's temp folder and then *copies* them over the checkpoint when that folder
is on another file system, so a disk that fills during the copy left a truncated ``last.ckpt`` or
``best.ckpt`` under its real name.

:func:`resolve_checkpoint` is the one rule for which file a ``ckpt_path`` names (eval.py, predict.py, the
export, ``init_head``): a checkpoint file, the output folder of a ``train.py`` run (its
``checkpoints/best.ckpt``, else ``checkpoints/last.ckpt``), or that run's ``checkpoints`` folder. The SVF
artifact next to a checkpoint (``best.svf.pt``) is refused with a message pointing to the checkpoint beside
it: it holds the trained singular values only, not a model to evaluate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import Tensor

from svfseg.data.samplers import step_seed
from svfseg.files import atomic_write, read_tensor_file, torch_save
from svfseg.svf import adapter_state_dict, adapter_tensors
from svfseg.svf.state import FORMAT as SVF_ARTIFACT_FORMAT

log = logging.getLogger(__name__)


def first_non_finite(state_dict: dict[str, Any]) -> str | None:
    """Name of the first floating tensor holding a NaN or inf, or None."""
    for name, value in state_dict.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose saves are atomic in the checkpoint's own folder.

    ``save_checkpoint`` writes the whole checkpoint to a temporary file next to the target, flushes it
    to disk and renames it over the target (:func:`svfseg.files.atomic_write`): a full disk, a kill or
    a power loss during the save keeps the previous checkpoint whole under its name, leaves no
    temporary file behind, and the error names the checkpoint. Loading and removing are Lightning's.
    Remote paths (``s3://`` and other fsspec URLs) keep Lightning's writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)  # refuses storage_options
            return
        target = Path(str(path).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: torch_save(checkpoint, tmp))
        log.debug("saved checkpoint %s", target)


def use_atomic_checkpoint_io(trainer: pl.Trainer) -> None:
    """Give a Trainer built with Lightning's default checkpoint writer an :class:`AtomicCheckpointIO`.

    svfseg's own Trainers get one through ``plugins`` (``svfseg.tasks.builders.trainer_arguments``); this
    covers a Trainer built elsewhere with svfseg's checkpoint callbacks. Another writer (an async or a
    cloud one) is left as it is.
    """
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


class LastCheckpoint(Checkpoint):
    """Writes ``<dirpath>/<filename>.ckpt`` every ``every_n_train_steps`` optimizer steps and after every epoch.

    The epoch save happens in ``on_train_epoch_end``, i.e. after the epoch's validation, so a resume
    neither repeats nor skips it. The step save is skipped on an epoch's last batch: a run killed during
    that epoch's validation then resumes from the previous step save and validates again, instead of
    Lightning moving on to the next epoch without validating. Writes are atomic
    (:class:`AtomicCheckpointIO`), so a kill or a full disk mid-write keeps the previous file.

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

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        use_atomic_checkpoint_io(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        """Write the checkpoint (every rank calls this; Lightning writes on rank 0 only)."""
        if trainer.sanity_checking or bool(trainer.fast_dev_run):
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state, for resume
        self.last_model_path = str(self.path)
        self._last_saved_step = trainer.global_step

    @property
    def saved_step(self) -> int:
        """The global step of the last write in this process (-1: none yet)."""
        return self._last_saved_step

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


CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")
ARTIFACT_SUFFIX = ".svf.pt"


def svf_artifact_path(checkpoint_path: str | Path) -> Path:
    """Where the SVF artifact of a checkpoint lives: ``.../best.ckpt`` -> ``.../best.svf.pt``."""
    path = Path(checkpoint_path)
    return path.with_name(f"{path.stem}{ARTIFACT_SUFFIX}")


# An artifact over this fraction of the backbone's parameter count is no adapter: best.ckpt is the record.
ARTIFACT_MAX_FRACTION = 0.5


def _backbone(pl_module: pl.LightningModule) -> torch.nn.Module | None:
    backbone = getattr(getattr(pl_module, "model", None), "backbone", None)
    return backbone if isinstance(backbone, torch.nn.Module) else None


def artifact_skip_reason(
    pl_module: pl.LightningModule,
    checkpoint_path: str | Path,
    max_fraction: float = ARTIFACT_MAX_FRACTION,
) -> str | None:
    """Why no adapter artifact is written for this module (the trained tensors are too large), or None.

    The rule: the tensors the artifact would hold (``adapter_tensors`` of the backbone) may be at most
    ``max_fraction`` of the backbone's parameter count; above it the artifact would be about as large
    as the backbone itself and the checkpoint is the complete record.
    """
    backbone = _backbone(pl_module)
    if backbone is None:
        return None
    trained = sum(t.numel() for t in adapter_tensors(backbone).values())
    # the same unit on both sides: the artifact holds buffers too (BN running statistics)
    total = sum(t.numel() for t in backbone.state_dict().values() if isinstance(t, torch.Tensor))
    if not trained or trained <= max_fraction * total:
        return None
    spec = getattr(pl_module, "finetune_spec", None) or {}
    name = spec.get("name", "?") if isinstance(spec, Mapping) else "?"
    checkpoint = Path(checkpoint_path)
    return (
        f"finetune={name} trains {trained:,} backbone tensor elements, {trained / total:.0%} of the "
        f"backbone's {total:,} (over the {max_fraction:.0%} limit of an adapter artifact): no "
        f"{svf_artifact_path(checkpoint).name} is written; {checkpoint.name} is the complete record of "
        "the fine-tune"
    )


def _plain(value: Any) -> Any:
    """Config values as dict/list/scalars, so ``torch.load(weights_only=True)`` reads them."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return value
    return [_plain(v) for v in value]


def write_svf_artifact(
    pl_module: pl.LightningModule,
    checkpoint_path: str | Path,
    *,
    max_fraction: float = ARTIFACT_MAX_FRACTION,
    warn: bool = True,
) -> Path | None:
    """Write the adapter artifact of the module's backbone next to ``checkpoint_path``.

    The artifact (``adapter_state_dict`` of ``model.backbone``; BAM: the meta branch's backbone) holds
    every backbone tensor that trains (``requires_grad``): the SVF factors, the BN affine (with the BN
    running statistics) and whole conv weights of ``part``, plus the fingerprints of the base weights,
    and the strategy under ``finetune``. Restore it with ``load_adapter_state_dict(model.backbone,
    torch.load(path, weights_only=True))`` after building the model from the same pretrained weights
    and applying the same strategy.

    Returns None, and writes nothing (an existing artifact at that path is removed), when nothing in the
    backbone trains, or when the artifact would exceed ``max_fraction`` of the backbone (then, with
    ``warn``, the warning of :func:`artifact_skip_reason` is logged).
    """
    backbone = _backbone(pl_module)
    if backbone is None:
        return None
    path = svf_artifact_path(checkpoint_path)
    if not adapter_tensors(backbone):
        path.unlink(missing_ok=True)  # never leave an artifact of another run next to this checkpoint
        return None
    reason = artifact_skip_reason(pl_module, checkpoint_path, max_fraction)
    if reason is not None:
        path.unlink(missing_ok=True)  # nor one of an earlier save
        if warn:
            log.warning(reason)
        return None
    state = adapter_state_dict(backbone)
    spec = getattr(pl_module, "finetune_spec", None)
    if isinstance(spec, Mapping):
        state["finetune"] = _plain(spec)  # which strategy to apply before restoring (informative)
    return atomic_write(path, lambda tmp: torch_save(state, tmp))


def load_checkpoint_dict(path: str | Path) -> dict[str, Any]:
    """Read an svfseg checkpoint safely (weights_only, memory-mapped) with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path} does not exist")
    # memory-mapped: the callers check the metadata, and the weights are read once, by the loader
    checkpoint = read_tensor_file(
        path,
        error=ValueError,
        what="an svfseg checkpoint",
        fix="name another checkpoint (a run folder finds best.ckpt / last.ckpt in it)",
        mmap=True,
    )
    if not isinstance(checkpoint, dict) or "svfseg" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(
            f"{path} was not written by svfseg's train.py (no 'svfseg'/'state_dict' entries); "
            "a BAM base learner (pspnet.pt) is read by method.base_learner, not by eval.py"
        )
    return checkpoint


def _candidates(run_dir: Path) -> list[Path]:
    """The files a run directory is searched for, in order of preference."""
    return [run_dir / "checkpoints" / name for name in CHECKPOINT_NAMES] + [
        run_dir / name for name in CHECKPOINT_NAMES
    ]


def _svf_artifact(path: Path) -> dict[str, Any] | None:
    """The content of ``path`` when it is an SVF artifact (``format: svfseg.svf``), else None."""
    try:
        state = read_tensor_file(path, error=ValueError, fix="", mmap=True)
    except ValueError:  # not readable at all: the checkpoint loader names the problem
        return None
    return state if isinstance(state, dict) and state.get("format") == SVF_ARTIFACT_FORMAT else None


def artifact_message(path: Path) -> str:
    """Why an SVF artifact is not a checkpoint, and which file to pass instead."""
    stem = path.name[: -len(ARTIFACT_SUFFIX)] if path.name.endswith(ARTIFACT_SUFFIX) else path.stem
    beside = path.with_name(f"{stem}.ckpt")
    if beside.is_file():
        instead = f"pass the checkpoint next to it, ckpt_path={beside}"
    else:
        instead = f"pass the checkpoint it was saved with (here {beside} is missing) or the run directory"
    return (
        f"ckpt_path={path} is the small SVF artifact (the trained singular values, format "
        f"{SVF_ARTIFACT_FORMAT!r}), not a checkpoint: it holds no model to run; {instead}. To apply the "
        "artifact to a model of your own, see docs/svf-api.md (load_svf_state_dict)"
    )


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: the file itself, or a run directory's best (else last) checkpoint.

    Raises FileNotFoundError naming every place looked at when there is none, and ValueError for the
    SVF artifact (``best.svf.pt``), which is not a checkpoint.
    """
    p = Path(str(path)).expanduser()
    if p.is_dir():
        candidates = _candidates(p)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        looked = ", ".join(str(c.relative_to(p)) for c in candidates)
        raise FileNotFoundError(
            f"ckpt_path={p} is a folder without a checkpoint (looked for {looked} in it); pass a checkpoint "
            "file, or the output folder of a train.py run that has saved one"
        )
    if not p.is_file():
        raise FileNotFoundError(
            f"ckpt_path={p} does not exist (expected a checkpoint file, or the output folder of a train.py "
            "run holding checkpoints/best.ckpt)"
        )
    if _svf_artifact(p) is not None:
        raise ValueError(artifact_message(p))
    return p


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes the adapter artifact next to each checkpoint it saves (rank 0 only).

    ``artifact_max_fraction``: the artifact is skipped (with one warning per run) when it would hold more
    than this fraction of the backbone's parameter count (see :func:`artifact_skip_reason`).
    """

    def __init__(
        self, *args: Any, artifact_max_fraction: float = ARTIFACT_MAX_FRACTION, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(artifact_max_fraction, bool) or not 0 < artifact_max_fraction <= 1:
            raise ValueError(f"artifact_max_fraction={artifact_max_fraction!r} must be a number in (0, 1]")
        self.artifact_max_fraction = float(artifact_max_fraction)
        self._skip_warned = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        use_atomic_checkpoint_io(trainer)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        module = trainer.lightning_module
        if trainer.is_global_zero and module is not None:
            fraction = self.artifact_max_fraction
            skipped = artifact_skip_reason(module, filepath, fraction) is not None
            written = write_svf_artifact(module, filepath, max_fraction=fraction, warn=not self._skip_warned)
            self._skip_warned = self._skip_warned or skipped
            if written is not None:
                log.debug("wrote the adapter artifact %s", written)

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
    "ARTIFACT_MAX_FRACTION",
    "AtomicCheckpointIO",
    "BestCheckpoint",
    "LastCheckpoint",
    "StepSeed",
    "artifact_skip_reason",
    "first_non_finite",
    "load_checkpoint_dict",
    "resolve_checkpoint",
    "svf_artifact_path",
    "use_atomic_checkpoint_io",
    "write_svf_artifact",
]
