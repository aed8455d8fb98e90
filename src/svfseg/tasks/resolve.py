"""Resolve a composed train.py config once into a :class:`TrainRun`: every check, every derived fact.

``train(cfg)`` hands ``cfg`` here and reads only the returned run afterwards: the builders take the run,
not the config, so no step asks ``config_checks`` again for a fact (world size, per-process batch, the
resume checkpoint) that resolving computed already.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from svfseg.config_checks import CheckedRun, ConfigError, check_train_run, stage_batch_sizes, world_size
from svfseg.lightning.checkpoint_record import CheckpointRecord, CheckpointRecordError
from svfseg.lightning.checkpointing import load_checkpoint_dict
from svfseg.lightning.warm_start import HeadSource, read_head
from svfseg.run_dir import (
    RESULT_FILES,
    describe_changes,
    differing_keys,
    hashed_config,
    is_recorded_run,
    slurm_restart_count,
)
from svfseg.run_spec import RunMismatchError, RunSpec, check_identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRun:
    """One run, resolved: what it is (``spec``) and what running it needs.

    Args:
        config: the composed config; its ``dataset``, ``optim``, ``trainer``, ``callbacks`` and ``logger``
            nodes are built as they are (they are Hydra targets and keyword arguments).
        spec: the run's :class:`RunSpec` (stored in every checkpoint).
        stage: ``meta`` (few-shot training) or ``base`` (BAM's stage 1).
        world_size: processes (devices x nodes) the trainer asks for.
        batch_size, eval_batch_size: the running stage's batches per process.
        ckpt_path: the checkpoint a resume continues from (checked against ``spec``; BAM's stage 1: its own
            folder's ``last.ckpt``, whose ownership record the claim checks), else None.
        resuming: ``ckpt_path`` lies in ``out_dir``: the command continues the run that owns the folder.
        init_head: the checked checkpoint whose head starts this run (``init_head=``), read once; None
            without one, and on a resume (the resumed checkpoint holds the head).
        finished: the results of this very run, already in ``out_dir`` (``ckpt_path=auto``, or a requeued
            SLURM job): nothing is trained; None otherwise.
    """

    config: DictConfig
    spec: RunSpec
    stage: str
    world_size: int
    batch_size: int
    eval_batch_size: int
    ckpt_path: str | None = None
    resuming: bool = False
    init_head: HeadSource | None = None
    finished: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig, spec: RunSpec | None = None, *, training: bool = True) -> TrainRun:
        """The run of an already valid config (no launch checks: tests, eval.py, the demos).

        ``training=False`` (evaluation only): the training batch is not used, so it is split like an
        evaluation batch rather than held to the world size (a checkpoint trained on 4 processes
        evaluates on 3).
        """
        stage = str(cfg.get("stage", "meta"))
        world = world_size(cfg.trainer)
        batch, eval_batch = stage_batch_sizes(cfg, stage, world, training=training)
        return cls(
            config=cfg,
            spec=spec if spec is not None else RunSpec.from_config(cfg),
            stage=stage,
            world_size=world,
            batch_size=batch,
            eval_batch_size=eval_batch,
        )

    @classmethod
    def from_checked(cls, cfg: DictConfig, checked: CheckedRun) -> TrainRun:
        """The run of a config that :func:`~svfseg.config_checks.check_train_run` checked (train.py)."""
        return cls(
            config=cfg,
            spec=checked.spec,
            stage=checked.stage,
            world_size=checked.world_size,
            batch_size=checked.batch_size,
            eval_batch_size=checked.eval_batch_size,
        )

    @property
    def out_dir(self) -> Path:
        """The run folder (``paths.output_dir``; read when needed: it names Hydra's run folder)."""
        return Path(str(self.config.paths.output_dir))

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    @property
    def matmul_precision(self) -> str:
        return str(self.config.get("matmul_precision", "highest"))

    @property
    def resume_changes(self) -> list[str]:
        """Config keys a resume may change on purpose (``resume_changes=[...]``)."""
        return [str(k) for k in self.config.get("resume_changes") or []]


def resolve_train_run(cfg: DictConfig, *, multirun: bool = False) -> TrainRun:
    """Check ``cfg`` (every problem at once, as :class:`ConfigError`), then resolve its run.

    The resume checkpoint and ``init_head`` are checked here too, before any list is built or any file
    written (Lightning would only find a mismatch after the setup).
    """
    run = TrainRun.from_checked(cfg, check_train_run(cfg, multirun=multirun))
    request = _resume_request(run)
    if request == "auto":
        finished = _finished_results(run)
        if finished is not None:  # nothing is logged: the finished run's folder stays byte for byte
            return replace(run, finished=finished)
        if run.config.get("ckpt_path") is None:
            log.info("SLURM requeued this job (restart %d): ckpt_path=auto", slurm_restart_count())
    # BAM's stage 1 resumes its own folder's last.ckpt only (the checks): the folder's record is its identity
    ckpt_path = _ckpt_path(run, request) if run.stage == "base" else _resume_checkpoint(run, request)
    init_head = _init_head(run)  # checked on a resume too: the command names it
    resuming = ckpt_path is not None and Path(ckpt_path).resolve().is_relative_to(run.out_dir.resolve())
    return replace(
        run, ckpt_path=ckpt_path, resuming=resuming, init_head=init_head if ckpt_path is None else None
    )


def _resume_request(run: TrainRun) -> str | None:
    """``ckpt_path`` as the command means it. A job that SLURM requeued (a timeout or a preemption: the
    submitit launcher resubmits the same command) and names no checkpoint resumes as ``auto`` would."""
    ckpt = run.config.get("ckpt_path")
    if ckpt is None and slurm_restart_count() > 0:
        return "auto"
    return None if ckpt is None else str(ckpt)


def _finished_results(run: TrainRun) -> dict[str, Any] | None:
    """The results this run already wrote to its own folder (same hashed config), else None."""
    path = run.out_dir / RESULT_FILES[run.stage]
    if not path.is_file() or not is_recorded_run(run.out_dir, run.config):
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{path} is unreadable ({err}); ckpt_path=auto cannot tell whether the run finished: remove the "
            "file to train the run's last part again (ckpt_path=last resumes it), or use another folder"
        ) from err
    if run.stage == "base" and not Path(str(results.get("base_learner"))).is_file():
        return None  # the written base learner is gone: train it again
    return dict(results)


def _ckpt_path(run: TrainRun, ckpt: str | None) -> str | None:
    """``last`` is this run directory's ``checkpoints/last.ckpt``; ``auto`` is that file where it exists
    (else a new start)."""
    path = run.out_dir / "checkpoints" / "last.ckpt"
    if ckpt == "auto":
        return str(path) if path.is_file() else None
    if ckpt == "last":
        if not path.is_file():
            raise ConfigError(
                f"ckpt_path=last but {path} does not exist: resume needs the same run directory "
                "(same method/backbone/finetune/dataset/fold/shot/seed overrides) as the interrupted run"
            )
        return str(path)
    return None if ckpt is None else str(ckpt)


def _resume_checkpoint(run: TrainRun, request: str | None) -> str | None:
    """The checkpoint to resume from; one of another method, backbone, dataset, fold, shot or fine-tune
    strategy, or of other optimisation settings, is refused."""
    path = _ckpt_path(run, request)
    if path is None:
        return None
    record = _same_run_record(
        Path(path),
        run,
        source=f"ckpt_path={path}",
        fix="resume with the interrupted run's settings, or start a new run with ckpt_path=null",
    )
    finetune = dict(run.spec.finetune)
    if record.strategy_applied and record.finetune != finetune:
        old, new = record.finetune, finetune
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
    _check_resume_changes(run, record.config, path)
    return path


def _check_resume_changes(run: TrainRun, saved: dict[str, Any] | None, path: str) -> None:
    """A resume that would change the optimisation is refused unless ``resume_changes`` names the keys."""
    if saved is None:
        return
    allowed = run.resume_changes
    old, new = hashed_config(saved), hashed_config(run.config)
    keys = [k for k in differing_keys(old, new) if not any(k == a or k.startswith(f"{a}.") for a in allowed)]
    if keys:
        raise ConfigError(
            f"ckpt_path={path} was trained with other settings: {describe_changes(old, new, keys)}. A resume "
            f"continues the same optimisation; to change these on purpose name them, e.g. "
            f"resume_changes=[{','.join(keys)}] (README, 'Resuming and failures', says what a changed "
            "dataset.epochs does to the schedule), or start a new run with ckpt_path=null"
        )


def _init_head(run: TrainRun) -> HeadSource | None:
    """The checkpoint ``init_head`` names, read and checked before anything is written, or None."""
    value = run.config.get("init_head")
    if value in (None, ""):
        return None
    if run.stage == "base":
        raise ConfigError(
            "init_head is for few-shot training (stage=meta); BAM's stage 1 has no few-shot head"
        )
    try:
        return read_head(str(value), run.spec)
    except (FileNotFoundError, ValueError) as err:  # ValueError: refused record, or a file that does not read
        raise ConfigError(str(err)) from err


def _same_run_record(path: Path, run: TrainRun, *, source: str, fix: str) -> CheckpointRecord:
    """The run record of the checkpoint at ``path``, refused unless it is of this run's method, backbone,
    dataset, fold and shot (checked at start, before the run folder is claimed)."""
    try:
        record = CheckpointRecord.read(load_checkpoint_dict(path), source=source)
        check_identity(
            record.run.identity(), run.spec.identity(), source=source, target="this run is", fix=fix
        )
    except (CheckpointRecordError, RunMismatchError, ValueError) as err:  # ValueError: file does not read
        raise ConfigError(str(err)) from err
    return record
