"""train.py's logic: validate, build, fit, evaluate the best checkpoint, write ``metrics.json``."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from svfseg.config_checks import ConfigError, check_train_config
from svfseg.lightning.checkpointing import load_checkpoint_dict, resolve_checkpoint
from svfseg.lightning.wandb_logging import redact_secrets
from svfseg.lightning.warm_start import load_head
from svfseg.precision import apply_matmul_precision
from svfseg.run_dir import (
    RunDirError,
    check_ownership,
    config_hash,
    describe_changes,
    differing_keys,
    hashed_config,
    is_global_rank_zero,
    run_lock,
    save_hydra_record,
    write_record,
)
from svfseg.run_spec import RunMismatchError, RunSpec, check_identity
from svfseg.tasks.base_stage import train_base_learner
from svfseg.tasks.builders import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    build_trainer,
    output_dir,
    plain,
)
from svfseg.tasks.reporting import (
    close_loggers,
    metrics_record,
    print_metrics,
    trainable_counts,
    write_metrics_json,
)

log = logging.getLogger(__name__)


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path=last`` means this run directory's ``checkpoints/last.ckpt``."""
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        path = output_dir(cfg) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise ConfigError(
                f"ckpt_path=last but {path} does not exist: resume needs the same run directory "
                "(same method/backbone/finetune/dataset/fold/shot/seed overrides) as the interrupted run"
            )
        return str(path)
    return None if ckpt is None else str(ckpt)


def check_resume_checkpoint(cfg: DictConfig, spec: RunSpec) -> str | None:
    """The checkpoint to resume from; one of another method, backbone, dataset, fold, shot or fine-tune
    strategy is refused here, before any list is built or any file written (Lightning would only find
    out after the setup)."""
    path = resolve_ckpt_path(cfg)
    if path is None:
        return None
    meta = load_checkpoint_dict(Path(path))["svfseg"]
    try:
        check_identity(
            meta.get("identity") or {},
            spec.identity(),
            source=f"ckpt_path={path}",
            target="this run is",
            fix="resume with the interrupted run's settings, or start a new run with ckpt_path=null",
        )
    except RunMismatchError as err:
        raise ConfigError(str(err)) from err
    finetune = dict(spec.finetune)
    if meta.get("finetune") is not None and meta["finetune"] != finetune:
        old, new = meta["finetune"], finetune
        if old.get("name") != new.get("name"):
            was, now = f"finetune={old.get('name')}", f"finetune={new.get('name')}"
        else:
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            was = ", ".join(f"finetune.{k}={old.get(k)!r}" for k in keys)
            now = ", ".join(f"finetune.{k}={new.get(k)!r}" for k in keys)
        raise ConfigError(
            f"ckpt_path={path} was trained with {was} but this run sets {now}; a run resumes with the "
            "strategy it was trained with (its parameters and optimizer state depend on it)"
        )
    _check_resume_changes(cfg, meta.get("config"), path)
    return path


def _check_resume_changes(cfg: DictConfig, saved: dict[str, Any] | None, path: str) -> None:
    """A resume that would change the optimisation is refused unless ``resume_changes`` names the keys."""
    if saved is None:
        return
    allowed = [str(k) for k in cfg.get("resume_changes") or []]
    old, new = hashed_config(saved), hashed_config(cfg)
    keys = [k for k in differing_keys(old, new) if not any(k == a or k.startswith(f"{a}.") for a in allowed)]
    if keys:
        raise ConfigError(
            f"ckpt_path={path} was trained with other settings: {describe_changes(old, new, keys)}. A resume "
            f"continues the same optimisation; to change these on purpose name them, e.g. "
            f"resume_changes=[{','.join(keys)}] (README, 'Resuming and failures', says what a changed "
            "dataset.epochs does to the schedule), or start a new run with ckpt_path=null"
        )


def _is_resume(cfg: DictConfig, ckpt_path: str | None) -> bool:
    """The command continues the run that owns its output folder."""
    if ckpt_path is None:
        return False
    return Path(ckpt_path).resolve().is_relative_to(output_dir(cfg).resolve())


def train(cfg: DictConfig, *, multirun: bool = False) -> dict[str, Any]:
    """Run one training job; returns the final test metrics (what a sweeper optimises).

    The first process checks that the run directory is free for this run (svfseg.run_dir), holds its
    lock while it trains, and only then writes the ownership record and ``.hydra/``.
    """
    spec = check_train_config(cfg, multirun=multirun)
    ckpt_path = check_resume_checkpoint(cfg, spec) if cfg.stage != "base" else None
    init_head = _check_init_head(cfg)
    out = output_dir(cfg)
    owner = is_global_rank_zero()
    try:
        if owner:
            allowed = [str(k) for k in cfg.get("resume_changes") or []]
            check_ownership(out, cfg, resuming=_is_resume(cfg, ckpt_path), allowed=allowed)
        lock = run_lock(out) if owner else nullcontext()
        with lock:
            if owner:
                write_record(out, cfg)
                save_hydra_record(out, cfg)
                log.info("run directory %s (config hash %s)", out, config_hash(cfg))
            return _train(cfg, spec, ckpt_path, init_head)
    except RunDirError as err:
        raise ConfigError(str(err)) from err


def _check_init_head(cfg: DictConfig) -> Path | None:
    """The checkpoint ``init_head`` names (checked before anything is written), or None."""
    value = cfg.get("init_head")
    if value in (None, ""):
        return None
    if cfg.stage == "base":
        raise ConfigError(
            "init_head is for few-shot training (stage=meta); BAM's stage 1 has no few-shot head"
        )
    try:
        return resolve_checkpoint(str(value))
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err).replace("ckpt_path=", "init_head=")) from err


def _train(
    cfg: DictConfig, spec: RunSpec, ckpt_path: str | None, init_head: Path | None = None
) -> dict[str, Any]:
    apply_matmul_precision(str(cfg.get("matmul_precision", "highest")))
    if cfg.stage == "base":
        return train_base_learner(cfg, spec)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg, spec)
    module = build_module(cfg, spec)
    if init_head is not None and ckpt_path is None:  # a resume restores the head from its own checkpoint
        try:
            load_head(module.model, init_head, spec)
        except RunMismatchError as err:
            raise ConfigError(str(err)) from err
    # Saved in every checkpoint: credential-like values (e.g. a key typed into a config) are redacted.
    module.run_config = redact_secrets(plain(cfg))
    callbacks = build_callbacks(cfg, spec, restoring=ckpt_path is not None)
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, callbacks, loggers, spec)
    status = "failed"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        results: dict[str, Any] = {}
        if cfg.get("test_after_fit", True) and not trainer.fast_dev_run:
            best = _best_checkpoint(trainer)
            # The first eval seed's fixed episodes (eval.py reports every seed).
            loader = datamodule.eval_dataloader(int(cfg.dataset.eval_seeds[0]))
            test = trainer.test(module, dataloaders=loader, ckpt_path=best, weights_only=True)
            results = metrics_record(
                module.test_results,
                cfg=cfg,
                checkpoint=best,
                n_episodes=int(cfg.dataset.n_episodes),
                seeds=list(cfg.dataset.eval_seeds)[:1],
                config=module.run_config,  # resolved and redacted, as in eval.py's record
                trainable=trainable_counts(module.param_groups),
            )
            if trainer.is_global_zero:
                path = output_dir(cfg) / "metrics.json"
                write_metrics_json(path, results)
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


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint):
            if cb.best_model_path:
                return cb.best_model_path
            if cb.last_model_path:
                return cb.last_model_path
    log.warning("no checkpoint callback saved a model: testing the final weights")
    return None


__all__ = ["plain", "resolve_ckpt_path", "train"]
