"""eval.py's logic: rebuild a run from its checkpoint, evaluate fixed episodes per seed, write ``metrics.json``.

The checkpoint carries the run's resolved config, so ``eval.py ckpt_path=...`` needs nothing else; the
data root, episode count, seeds and batch size may be overridden. A checkpoint whose fold, shot, dataset,
method or backbone differs from what the command asks for is refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import RichProgressBar

from svfseg.config_checks import check_writable_dir
from svfseg.lightning.checkpointing import load_checkpoint_dict
from svfseg.lightning.module import FewShotSegModule
from svfseg.precision import apply_matmul_precision
from svfseg.run_spec import RunSpec, check_identity
from svfseg.tasks.builders import build_datamodule, plain, trainer_arguments
from svfseg.tasks.reporting import metrics_record, print_metrics

log = logging.getLogger(__name__)

# eval.py's override -> identity key it asks for
ASKED_KEYS = {
    "fold": "fold",
    "shot": "shot",
    "dataset_name": "dataset",
    "method_name": "method",
    "backbone_name": "backbone",
}


def run_config_from_checkpoint(checkpoint: dict[str, Any], cfg: DictConfig) -> DictConfig:
    """The training run's config with this command's overrides, refusing identity mismatches."""
    saved = checkpoint["svfseg"].get("config")
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
        run.dataset.eval_seeds = [int(s) for s in cfg.seeds]
    if cfg.get("eval_batch_size") is not None:
        run.dataset.eval_batch_size = int(cfg.eval_batch_size)
    run.dataset.num_workers = int(cfg.get("num_workers", run.dataset.num_workers))
    for label in ("table", "row"):  # an eval-only sweep files the numbers under another table's rows
        if cfg.get(label) is not None:
            run[label] = str(cfg[label])
    run.trainer = cfg.trainer
    return run


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on every seed's fixed episodes; rank 0 writes ``metrics.json``."""
    ckpt = Path(str(cfg.ckpt_path))
    check_writable_dir(cfg.paths.output_dir, "paths.output_dir")
    apply_matmul_precision(str(cfg.get("matmul_precision", "highest")))
    checkpoint = load_checkpoint_dict(ckpt)
    run = run_config_from_checkpoint(checkpoint, cfg)
    del checkpoint
    module = FewShotSegModule.load_from_checkpoint(
        ckpt, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    )
    trainer_cfg = trainer_arguments(cfg, bn_trains=False)  # evaluation never trains BN
    trainer_cfg.update(logger=False, enable_checkpointing=False)
    show_progress = trainer_cfg.get("enable_progress_bar", True)
    trainer = pl.Trainer(callbacks=[RichProgressBar()] if show_progress else [], **trainer_cfg)
    per_seed: dict[int, dict[str, Any]] = {}
    seeds = [int(s) for s in run.dataset.eval_seeds]
    for seed in seeds:
        seed_cfg = run.copy()
        seed_cfg.dataset.eval_seeds = [seed]
        datamodule = build_datamodule(seed_cfg, training=False)
        trainer.test(module, datamodule=datamodule, verbose=False)
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
    )
    if trainer.is_global_zero:
        out = Path(str(cfg.paths.output_dir))
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(record, indent=2))
        print_metrics(record, title=f"{ckpt.name}: {run.dataset.name} fold {run.fold}, {run.shot}-shot")
        log.info("wrote %s", out / "metrics.json")
    return record
