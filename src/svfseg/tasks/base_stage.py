"""BAM stage 1: train the PSPNet base learner on a fold's base classes and save it for stage 2.

    python train.py stage=base method=bam dataset=pascal fold=0 backbone=resnet50

Data: the full training list without the leakage filter (:class:`~svfseg.data.base_seg.BaseSegDataModule`);
model and recipe: :class:`~svfseg.lightning.base_learner.BaseLearnerModule` (Pascal runs the encoder at 1/10
of the head lr, COCO at the same lr). The best epoch (base-class mIoU on the val list) is written to
``method.base_learner`` with its dataset/fold/backbone meta, which stage 2 checks before using it, and
``stage1.json`` (that path and the score) to the run folder. ``last.ckpt`` is saved as in the few-shot
stage, so ``ckpt_path=last`` / ``auto`` (or a requeued SLURM job) resumes a stage 1 exactly, mid-epoch too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from svfseg.data.base_seg import BaseSegDataModule
from svfseg.lightning.base_learner import BaseLearnerModule
from svfseg.lightning.checkpointing import LastCheckpoint, StepSeed
from svfseg.lightning.csv_log import TrimLogsOnResume
from svfseg.lightning.progress import SparseMetricsProgressBar
from svfseg.methods.pspnet import save_base_learner
from svfseg.run_dir import RESULT_FILES
from svfseg.tasks.builders import build_loggers, build_trainer, plain, trainer_arguments
from svfseg.tasks.reporting import close_loggers, write_metrics_json
from svfseg.tasks.resolve import TrainRun

log = logging.getLogger(__name__)


def base_trainer_arguments(cfg: DictConfig) -> dict[str, Any]:
    """Trainer keyword arguments of stage 1: ``cfg.trainer`` with the stage's epochs and validation bound."""
    stage = cfg.dataset.base_stage
    trainer_cfg = trainer_arguments(cfg, bn_trains=True)  # stage 1 trains BN (BAM's code: SyncBN)
    trainer_cfg["max_epochs"] = int(stage.epochs)
    if stage.get("limit_val_batches") is not None:  # debug=tiny: a bounded validation, like stage 2's
        trainer_cfg["limit_val_batches"] = stage.limit_val_batches
    trainer_cfg["use_distributed_sampler"] = False
    return trainer_cfg


def train_base_learner(run: TrainRun) -> dict[str, Any]:
    """Fit the base learner of ``run`` (stage=base), then write the best epoch to ``method.base_learner``."""
    cfg, spec = run.config, run.spec
    pl.seed_everything(run.seed, workers=True)
    stage = cfg.dataset.base_stage
    fold = spec.fold
    datamodule = BaseSegDataModule(
        split=fold,
        root=str(cfg.dataset.root),
        train_size=stage.train_size,
        eval_size=stage.eval_size,
        batch_size=run.batch_size,
        eval_batch_size=run.eval_batch_size,
        num_workers=cfg.dataset.num_workers,
        seed=run.seed,
        source_lists=plain(cfg.dataset.source_lists),
        scale=tuple(stage.scale),
    )
    module = BaseLearnerModule(
        backbone=plain(cfg.backbone),
        num_classes=fold.num_base_labels,
        lr=float(stage.lr),
        encoder_lr_mult=float(stage.encoder_lr_mult),
        nonfinite_check_every=int(cfg.optim.nonfinite_check_every),
    )
    checkpoint = ModelCheckpoint(
        dirpath=run.out_dir / "checkpoints",
        filename="base_best",
        monitor="base/val_miou",
        mode="max",
        save_last=False,  # last.ckpt is LastCheckpoint's (since Lightning 2.6 this saver would write it
        # only in epochs where the best improved)
    )
    # last.ckpt every N steps and every epoch, as in the few-shot stage: a killed or requeued stage 1
    # resumes exactly (the loader's position, per-batch dropout seeds)
    save_every = OmegaConf.select(cfg, "callbacks.last_checkpoint.every_n_train_steps", default=500)
    last = LastCheckpoint(run.out_dir / "checkpoints", every_n_train_steps=save_every)
    loggers = build_loggers(run)
    trainer_cfg = base_trainer_arguments(cfg)
    every = int(trainer_cfg.get("log_every_n_steps", 10))
    callbacks: list[pl.Callback] = [
        checkpoint,
        last,
        StepSeed(run.seed),
        LearningRateMonitor(logging_interval="step"),
        TrimLogsOnResume(),  # the CSV log keeps an interrupted stage 1's rows up to its checkpoint
        SparseMetricsProgressBar(metrics_every=every, show=("base/loss", "base/val_miou")),
    ]
    trainer = build_trainer(run, callbacks, loggers, trainer_cfg)
    status = "failed"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=run.ckpt_path, weights_only=True)
        best_path = checkpoint.best_model_path or last.last_model_path
        best = BaseLearnerModule.load_from_checkpoint(best_path, map_location="cpu", weights_only=True)
        target = Path(str(cfg.method.base_learner))
        meta = {
            "dataset": fold.split_dataset,
            "fold": fold.fold,
            "backbone": spec.backbone_name,
            "width_mult": float(spec.backbone.get("width_mult", 1.0)),
            "coco_split": fold.coco_split,
            # 0.0 is a score (nothing segmented yet); None means validation never ran
            "val_miou": float("nan")
            if checkpoint.best_model_score is None
            else float(checkpoint.best_model_score),
            "epochs": int(stage.epochs),
            **({"classes": fold.fold_record()} if fold.folds is not None else {}),
        }
        results = {"base_learner": str(target), "val_miou": meta["val_miou"]}
        if trainer.is_global_zero:
            save_base_learner(best.model, target, meta)
            # the run folder's record that stage 1 finished (ckpt_path=auto skips the run when it is there)
            write_metrics_json(run.out_dir / RESULT_FILES["base"], results)
            log.info("saved the base learner to %s (base-class val mIoU %.4f)", target, meta["val_miou"])
            print(f"base learner written to {target}")
        status = "success"
        return results
    finally:
        close_loggers(loggers, status=status)
