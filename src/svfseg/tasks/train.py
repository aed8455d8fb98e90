"""train.py's logic: validate, build, fit, evaluate the best checkpoint, write ``metrics.json``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from svfseg.config_checks import ConfigError
from svfseg.data.episodes import table_info
from svfseg.data.lists.held_out import DEFAULT_SELECTION
from svfseg.lightning.checkpointing import LastCheckpoint
from svfseg.lightning.warm_start import apply_head
from svfseg.metrics.episode_file import EPISODES_FILE, episodes_record, with_intervals, write_episodes_json
from svfseg.precision import apply_matmul_precision
from svfseg.redaction import redact_secrets
from svfseg.run_dir import RESULT_FILES, RunDirError, claim_run_dir
from svfseg.tasks.base_stage import train_base_learner
from svfseg.tasks.builders import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    build_trainer,
    plain,
)
from svfseg.tasks.reporting import (
    close_loggers,
    metrics_record,
    print_metrics,
    trainable_counts,
    write_metrics_json,
)
from svfseg.tasks.resolve import TrainRun, resolve_train_run

log = logging.getLogger(__name__)


def train(cfg: DictConfig, *, multirun: bool = False) -> dict[str, Any]:
    """Run one training job; returns the final test metrics (what a sweeper optimises).

    ``cfg`` is resolved once (every check, the resume decision; svfseg.tasks.resolve); the first process
    then holds the run directory while it trains (svfseg.run_dir).
    """
    run = resolve_train_run(cfg, multirun=multirun)
    if run.finished is not None:  # ckpt_path=auto (or a requeued SLURM job) on a run that has finished
        print(f"already finished: {run.out_dir} (ckpt_path=auto skips it; its results are returned)")
        return run.finished
    try:
        with claim_run_dir(run.out_dir, run.config, resuming=run.resuming, allowed=run.resume_changes):
            return _train(run)
    except RunDirError as err:
        raise ConfigError(str(err)) from err


def _train(run: TrainRun) -> dict[str, Any]:
    apply_matmul_precision(run.matmul_precision)
    if run.stage == "base":
        return train_base_learner(run)
    pl.seed_everything(run.seed, workers=True)
    datamodule = build_datamodule(run)
    module = build_module(run)
    if run.init_head is not None:  # read and checked at start; None on a resume (its checkpoint has the head)
        apply_head(module.model, run.init_head)
    # Saved in every checkpoint: credential-like values (e.g. a key typed into a config) are redacted.
    module.run_config = redact_secrets(plain(run.config))
    callbacks = build_callbacks(run)
    loggers = build_loggers(run)
    trainer = build_trainer(run, callbacks, loggers)
    status = "failed"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=run.ckpt_path, weights_only=True)
        results: dict[str, Any] = {}
        dataset = run.config.dataset
        if run.config.get("test_after_fit", True) and not trainer.fast_dev_run:
            best = _tested_checkpoint(trainer, str(dataset.get("selection", DEFAULT_SELECTION)))
            # The first eval seed's fixed episodes (eval.py reports every seed).
            seed = int(dataset.eval_seeds[0])
            loader = datamodule.eval_dataloader(seed)
            test = trainer.test(module, dataloaders=loader, ckpt_path=best, weights_only=True)
            # Every episode's counts (episodes.json) and the bootstrap interval they give (miou_ci95).
            episodes = episodes_record(
                {seed: module.test_results},
                {seed: table_info(loader.dataset.table)},
                run.spec.fold.novel_classes,
            )
            results = metrics_record(
                module.test_results,
                cfg=run.config,
                checkpoint=best,
                n_episodes=int(dataset.n_episodes),
                seeds=[seed],
                config=module.run_config,  # resolved and redacted, as in eval.py's record
                trainable=trainable_counts(module.param_groups),
            )
            results = with_intervals(results, episodes)
            if trainer.is_global_zero:
                path = run.out_dir / RESULT_FILES["meta"]  # what ckpt_path=auto looks for
                write_metrics_json(path, results)
                write_episodes_json(run.out_dir / EPISODES_FILE, episodes)
                print_metrics(
                    results, title=f"test episodes of {Path(best).name if best else 'final weights'}"
                )
                log.info(
                    "test (%s, %d episodes of seed %s): mIoU %.2f, FB-IoU %.2f; wrote %s",
                    Path(best).name if best else "final weights",
                    results["n_episodes"],
                    results["seeds"][0],
                    100 * results["miou"],
                    100 * results["fbiou"],
                    path,
                )
            del test
        status = "success"
        return results
    finally:
        close_loggers(loggers, status=status)


def _tested_checkpoint(trainer: pl.Trainer, selection: str) -> str | None:
    """The checkpoint train.py tests: the best one, or with ``dataset.selection=last`` the last weights."""
    if selection != "last":
        return _best_checkpoint(trainer)
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, LastCheckpoint) and cb.last_model_path and cb.saved_step == trainer.global_step:
            return cb.last_model_path
    log.warning(
        "dataset.selection=last: no last.ckpt of the final step was written; testing the final weights"
    )
    return None


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint):
            if cb.best_model_path:
                return cb.best_model_path
            if cb.last_model_path:
                return cb.last_model_path
    log.warning("no checkpoint callback saved a model: testing the final weights")
    return None


__all__ = ["plain", "train"]
