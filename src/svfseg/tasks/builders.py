"""Turn a composed config into the objects of a run: DataModule, LightningModule, callbacks, loggers, Trainer."""

from __future__ import annotations

import logging
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ProgressBar
from pytorch_lightning.plugins.io import CheckpointIO

from svfseg.config_checks import DATASET_RUN_KEYS, DEFAULT_DATAMODULE, sync_batchnorm
from svfseg.data.datamodule import FewShotDataModule
from svfseg.lightning.callbacks import FinetuneCallback
from svfseg.lightning.checkpointing import AtomicCheckpointIO
from svfseg.lightning.csv_log import TrimLogsOnResume
from svfseg.lightning.module import FewShotSegModule
from svfseg.lightning.wandb_logging import build_wandb_logger
from svfseg.tasks.resolve import TrainRun

log = logging.getLogger(__name__)


def plain(node: Any) -> Any:
    """Config node -> plain python containers (checkpoints must load with weights_only=True)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def datamodule_arguments(dataset: DictConfig) -> dict[str, Any]:
    """The ``conf/dataset`` keys that are DataModule arguments (all but :data:`DATASET_RUN_KEYS`)."""
    return {k: v for k, v in plain(dataset).items() if k not in DATASET_RUN_KEYS}


def build_datamodule(run: TrainRun) -> FewShotDataModule:
    """The DataModule of ``run.config.dataset._target_`` for the run.

    Every key of ``conf/dataset/*.yaml`` but the run-level ones is a constructor argument; the run adds
    the fold (``split``), the per-process batches, the seed and whether BAM's base labels are needed.
    """
    dataset = run.config.dataset
    target = dataset.get("_target_", DEFAULT_DATAMODULE)  # older saved configs have none
    # A partial: the run's arguments (a FoldSpec among them) go in as they are, not through OmegaConf.
    make = hydra.utils.instantiate(
        {"_target_": target, "_partial_": True, **datamodule_arguments(dataset)}, _convert_="all"
    )
    return make(
        split=run.spec.fold,
        batch_size=run.batch_size,
        eval_batch_size=run.eval_batch_size,
        seed=run.seed,
        with_base_label=run.spec.method_name == "bam",
    )


def build_module(run: TrainRun, *, load_pretrained: bool = True) -> FewShotSegModule:
    """The LightningModule of the run."""
    return FewShotSegModule(run=run.spec, optim=plain(run.config.optim), load_pretrained=load_pretrained)


def build_callbacks(run: TrainRun) -> list[pl.Callback]:
    """The fine-tune callback first (it must run before anything touches the optimizer), then the config's.

    A resumed fit (``run.ckpt_path``) restores every tensor after setup: the strategy then builds its
    structure only.
    """
    restoring = run.ckpt_path is not None
    # The CSV log keeps an interrupted run's rows up to the checkpoint a resume starts from (none when
    # a run killed before its first checkpoint starts again).
    callbacks: list[pl.Callback] = [
        FinetuneCallback(run.spec.strategy, restoring=restoring),
        TrimLogsOnResume(),
    ]
    for node in (run.config.get("callbacks") or {}).values():
        if node is not None and "_target_" in node:
            callbacks.append(hydra.utils.instantiate(node))
    return callbacks


def build_loggers(run: TrainRun) -> list[Any]:
    loggers = []
    for name, node in (run.config.get("logger") or {}).items():
        if node is None or "_target_" not in node:
            continue
        if name == "wandb":
            loggers.append(build_wandb_logger(node, resuming=run.resuming))
        else:
            loggers.append(hydra.utils.instantiate(node))
    return loggers


def trainer_arguments(cfg: DictConfig, *, bn_trains: bool) -> dict[str, Any]:
    """``cfg.trainer`` as Trainer keyword arguments, ``sync_batchnorm: auto`` resolved (see config_checks).

    Every Trainer built from them (meta stage, BAM's stage 1, eval.py) writes its checkpoints through
    :class:`~svfseg.lightning.checkpointing.AtomicCheckpointIO` (added to ``plugins``, unless the config
    names a checkpoint writer of its own): a full disk never leaves a truncated checkpoint.
    """
    trainer_cfg = dict(plain(cfg.trainer))
    target = trainer_cfg.pop("_target_", "pytorch_lightning.Trainer")
    if target != "pytorch_lightning.Trainer":
        raise ValueError(f"trainer._target_={target}: svfseg uses one Lightning namespace, pytorch_lightning")
    trainer_cfg["sync_batchnorm"] = sync_batchnorm(trainer_cfg, bn_trains)
    plugins = trainer_cfg.get("plugins") or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    trainer_cfg["plugins"] = plugins
    return trainer_cfg


def build_trainer(
    run: TrainRun,
    callbacks: list[pl.Callback],
    loggers: list[Any],
    arguments: dict[str, Any] | None = None,
) -> pl.Trainer:
    """The Trainer of a training run, either stage: the one place that builds one.

    ``arguments`` are the Trainer's keyword arguments; by default the meta stage's
    (:func:`trainer_arguments`, SyncBN under DDP when the strategy trains BN, ``finetune=bn``). Without a
    logger (``logger=none``) the learning-rate monitors are dropped: Lightning refuses them at fit start;
    with ``trainer.enable_progress_bar=false`` the progress bars are: Lightning refuses them when built.
    """
    if arguments is None:
        arguments = trainer_arguments(run.config, bn_trains=not run.spec.strategy.frozen_bn)
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not arguments.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return pl.Trainer(callbacks=callbacks, logger=loggers or False, **arguments)
