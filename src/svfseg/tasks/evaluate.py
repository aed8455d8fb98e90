"""eval.py's logic: rebuild a run from its checkpoint, evaluate fixed episodes per seed, write ``metrics.json``.

The checkpoint carries the run's resolved config, so ``eval.py ckpt_path=...`` needs nothing else; the
data root, episode count, seeds and batch size may be overridden. A checkpoint whose fold, shot, dataset,
method or backbone differs from what the command asks for is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import RichProgressBar

from svfseg.config_checks import (
    ConfigError,
    _check_precision,
    _collect,
    check_accelerator,
    check_cluster_launch,
    check_dataset_root,
    check_devices,
    check_launcher,
    check_writable_dir,
    eval_seeds,
    positive_count,
)
from svfseg.data.cross_dataset import evaluation_fold
from svfseg.data.episodes import table_info
from svfseg.data.lists.held_out import DEFAULT_SELECTION
from svfseg.lightning.checkpoint_record import CheckpointRecord
from svfseg.lightning.checkpointing import load_checkpoint_dict, resolve_checkpoint
from svfseg.lightning.module import FewShotSegModule
from svfseg.metrics.episode_file import (
    EPISODES_FILE,
    TableInfo,
    episodes_record,
    with_intervals,
    write_episodes_json,
)
from svfseg.precision import apply_matmul_precision
from svfseg.run_dir import is_global_rank_zero, save_hydra_record
from svfseg.run_spec import RunSpec, check_identity
from svfseg.tasks.builders import build_datamodule, plain, trainer_arguments
from svfseg.tasks.reporting import metrics_record, print_metrics, trainable_counts, write_metrics_json
from svfseg.tasks.resolve import TrainRun
from svfseg.tta import TTAOptions, check_checkpoint

log = logging.getLogger(__name__)

# eval.py's override -> identity key it asks for
ASKED_KEYS = {
    "fold": "fold",
    "shot": "shot",
    "dataset_name": "dataset",
    "method_name": "method",
    "backbone_name": "backbone",
}


def run_config_from_checkpoint(record: CheckpointRecord, cfg: DictConfig) -> DictConfig:
    """The training run's config (from the checkpoint's record) with this command's overrides, refusing
    identity mismatches."""
    saved = record.config
    if saved is None:
        raise ValueError(
            "checkpoint has no saved run config (svfseg.config); re-save it with svfseg's train.py"
        )
    run = OmegaConf.create(saved)
    asked = {key: cfg.get(option) for option, key in ASKED_KEYS.items() if cfg.get(option) is not None}
    check_identity(
        RunSpec.from_config(run).identity(),
        asked,
        source="the checkpoint",
        target="the command asks for",
        fix="evaluate it without that override, or pick the checkpoint of the run you asked for",
        names={key: option for option, key in ASKED_KEYS.items()},
    )
    if cfg.get("dataset_root") is not None:
        run.dataset.root = str(cfg.dataset_root)
    if cfg.get("n_episodes") is not None:
        run.dataset.n_episodes = int(cfg.n_episodes)
    if cfg.get("seeds") is not None:
        run.dataset.eval_seeds = eval_seeds(cfg.seeds, "seeds")
    if cfg.get("eval_batch_size") is not None:
        run.dataset.eval_batch_size = int(cfg.eval_batch_size)
    if cfg.get("min_pixels") is not None:
        with open_dict(run):
            run.dataset.min_pixels = int(cfg.min_pixels)
    run.dataset.num_workers = int(cfg.get("num_workers", run.dataset.num_workers))
    for label in ("table", "row"):  # an eval-only sweep files the numbers under another table's rows
        if cfg.get(label) is not None:
            run[label] = str(cfg[label])
    run.trainer = cfg.trainer
    return run


def _open_checkpoint(cfg: DictConfig) -> tuple[Path, dict[str, Any], CheckpointRecord]:
    if OmegaConf.is_missing(cfg, "ckpt_path") or cfg.ckpt_path is None:
        raise ConfigError(
            "ckpt_path is not set: pass a checkpoint file or a train.py run directory, e.g. "
            "python eval.py ckpt_path=outputs/train/.../checkpoints/best.ckpt"
        )
    try:
        ckpt = resolve_checkpoint(cfg.ckpt_path)
        checkpoint = load_checkpoint_dict(ckpt)
        return ckpt, checkpoint, CheckpointRecord.read(checkpoint, source=f"ckpt_path={ckpt}")
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from err


def tta_options(cfg: DictConfig) -> TTAOptions:
    """eval.py's ``tta.*`` options (test-time adaptation on the support, docs/tta.md); off by default."""
    raw = cfg.get("tta")
    return TTAOptions.from_config(None if raw is None else OmegaConf.to_container(raw, resolve=True))


def check_eval_config(cfg: DictConfig) -> tuple[Path, CheckpointRecord, DictConfig]:
    """Every start-up check of eval.py, before anything is built or written: (checkpoint file, its record,
    the run config to evaluate: the training run's with this command's overrides, held to its identity).

    All problems are raised together as one :class:`ConfigError`, one line each (eval.py prints them and
    exits with status 2, as train.py does).
    """
    problems: list[str] = []
    opened = _collect(problems, lambda: _open_checkpoint(cfg))
    if cfg.get("seeds") is not None:
        _collect(problems, lambda: eval_seeds(cfg.seeds, "seeds"))
    if cfg.get("n_episodes") is not None:
        _collect(problems, lambda: positive_count(cfg.n_episodes, "n_episodes", "the episode count per seed"))
    if cfg.get("eval_batch_size") is not None:
        what = "the evaluation batch (episodes per forward pass)"
        _collect(problems, lambda: positive_count(cfg.eval_batch_size, "eval_batch_size", what))
    if cfg.get("min_pixels") is not None:
        what = "the evaluation list's pixel threshold (an image counts for a class with >= this many pixels)"
        _collect(problems, lambda: positive_count(cfg.min_pixels, "min_pixels", what))
    _collect(problems, lambda: _check_precision(cfg))
    _collect(problems, lambda: check_accelerator(cfg.trainer))
    _collect(problems, lambda: check_devices(cfg.trainer))
    _collect(problems, lambda: check_launcher(cfg.trainer))
    _collect(problems, lambda: check_cluster_launch(cfg.trainer))
    _collect(problems, lambda: check_writable_dir(cfg.paths.output_dir, "paths.output_dir"))
    tta = _collect(problems, lambda: tta_options(cfg))
    if tta is not None and opened is not None:
        _collect(problems, lambda: _check_tta_checkpoint(tta, opened[1], opened[2]))
    # e.g. fold=2 for a fold-0 checkpoint: refused here, one line and exit 2, like every other start-up problem
    run = (
        _collect(problems, lambda: run_config_from_checkpoint(opened[2], cfg)) if opened is not None else None
    )
    if run is not None:  # the data is first read when the test starts, after the model is built
        target = cfg.get("eval_dataset")
        name, root = (
            (target, cfg.get("dataset_root")) if target is not None else (run.dataset.name, run.dataset.root)
        )
        if root is not None:
            _collect(problems, lambda: check_dataset_root(str(name), root))
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
    ckpt, _, record = opened
    return ckpt, record, run


def _check_tta_checkpoint(tta: TTAOptions, checkpoint: dict[str, Any], record: CheckpointRecord) -> None:
    """The checkpoint holds the parameters ``tta.params`` adapts (its strategy's, when one was applied)."""
    finetune = record.finetune["name"] if record.strategy_applied else None
    check_checkpoint(tta, checkpoint["state_dict"], finetune)


def _evaluation_spec(cfg: DictConfig, run: DictConfig) -> tuple[RunSpec, str | None]:
    """The run spec the data is built from, and the cross-dataset protocol's name (None: the training data).

    ``eval_dataset`` switches ``run``'s dataset to the target (its root from ``dataset_root``); the
    checkpoint's own method, backbone and strategy stay.
    """
    trained = RunSpec.from_config(run)
    target = cfg.get("eval_dataset")
    if target is None or (target == trained.fold.dataset and cfg.get("eval_fold") is None):
        return trained, None
    root = cfg.get("dataset_root")
    if root is None:
        raise ConfigError(f"eval_dataset={target} needs dataset_root=ROOT (the {target} dataset's root)")
    try:
        fold, protocol = evaluation_fold(trained.fold, str(target), root, cfg.get("eval_fold"))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    with open_dict(run):
        run.dataset.name = str(target)
        run.dataset.source_lists = None
        run.dataset.cache_dir = None
        run.dataset.selection = (
            DEFAULT_SELECTION  # no image of the target chose the checkpoint: test them all
        )
        run.fold = fold.fold
    return RunSpec(
        fold=fold, method=trained.method, backbone=trained.backbone, finetune=trained.finetune
    ), protocol


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on every seed's fixed episodes; rank 0 writes ``metrics.json``.

    ``ckpt_path`` may be a checkpoint file or a train.py run directory (:func:`resolve_checkpoint`).
    """
    ckpt, _, run = check_eval_config(cfg)
    apply_matmul_precision(str(cfg.get("matmul_precision", "highest")))
    trained_dataset, trained_fold = str(run.dataset.name), int(run.fold)
    selection = str(run.dataset.get("selection", DEFAULT_SELECTION))  # how the checkpoint was chosen
    eval_spec, protocol = _evaluation_spec(cfg, run)
    tta = tta_options(cfg)
    module = FewShotSegModule.load_from_checkpoint(
        ckpt, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    )
    try:
        module.configure_tta(tta)
    except ValueError as err:  # e.g. tta.stages without a LoRA target
        raise ConfigError(str(err)) from err
    if is_global_rank_zero():  # the checks passed: now the run folder gets its record
        save_hydra_record(Path(str(cfg.paths.output_dir)), cfg)
    if protocol is not None:
        module.use_evaluation_fold(eval_spec.fold)
    trainer_cfg = trainer_arguments(cfg, bn_trains=False)  # evaluation never trains BN
    trainer_cfg.update(logger=False, enable_checkpointing=False)
    show_progress = trainer_cfg.get("enable_progress_bar", True)
    trainer = pl.Trainer(callbacks=[RichProgressBar()] if show_progress else [], **trainer_cfg)
    per_seed: dict[int, dict[str, Any]] = {}
    tables: dict[int, TableInfo] = {}  # each seed's table digest and queries (episodes.json)
    seeds = [int(s) for s in run.dataset.eval_seeds]
    for seed in seeds:
        seed_cfg = run.copy()
        seed_cfg.dataset.eval_seeds = [seed]
        datamodule = build_datamodule(TrainRun.from_config(seed_cfg, eval_spec, training=False))
        trainer.test(module, datamodule=datamodule, verbose=False)
        tables[seed] = table_info(datamodule.val_table(seed))
        per_seed[seed] = {
            k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in module.test_results.items()
        }
    record = metrics_record(
        per_seed,
        cfg=run,
        checkpoint=str(ckpt),
        n_episodes=int(run.dataset.n_episodes),
        seeds=seeds,
        config=plain(run),
        fold=eval_spec.fold,
        trainable=trainable_counts(module.param_groups),  # the strategy re-applied from the checkpoint
    )
    record["selection"] = selection
    episodes = episodes_record(per_seed, tables, eval_spec.fold.novel_classes)
    record = with_intervals(record, episodes)  # miou_ci95: the bootstrap over query images
    if protocol is not None:
        record["evaluation"] = {
            "protocol": protocol,
            "dataset": eval_spec.fold.dataset,
            "fold": eval_spec.fold.fold,
            "novel_classes": list(eval_spec.fold.novel_classes),
            "trained_on": {"dataset": trained_dataset, "fold": trained_fold},
        }
    if tta.enabled:  # absent when off, so a plain evaluation writes the record it always wrote
        record["tta"] = tta.to_dict()
    if trainer.is_global_zero:
        out = Path(str(cfg.paths.output_dir))
        out.mkdir(parents=True, exist_ok=True)
        write_metrics_json(out / "metrics.json", record)
        write_episodes_json(out / EPISODES_FILE, episodes)
        print_metrics(record, title=f"{ckpt.name}: {run.dataset.name} fold {run.fold}, {run.shot}-shot")
        log.info("wrote %s", out / "metrics.json")
    return record
