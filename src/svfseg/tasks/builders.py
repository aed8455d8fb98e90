"""Turn a composed config into the objects of a run: DataModule, LightningModule, callbacks, loggers, Trainer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from svfseg.data.splits import base_classes, novel_classes
from svfseg.lightning.callbacks import FinetuneCallback
from svfseg.lightning.module import FewShotSegModule
from svfseg.models.factory import SPLIT_DATASET

log = logging.getLogger(__name__)


def fold_classes(cfg: DictConfig) -> tuple[list[int], list[int]]:
    """(training classes, evaluation classes) of the configured fold."""
    name = SPLIT_DATASET[cfg.dataset.name]
    split = cfg.dataset.get("coco_split", "interleaved")
    return base_classes(name, cfg.fold, coco_split=split), novel_classes(name, cfg.fold, coco_split=split)


def world_size_of(cfg: DictConfig) -> int:
    from svfseg.config_checks import _world_size

    return _world_size(cfg.trainer)


def plain(node: Any) -> Any:
    """Config node -> plain python containers (checkpoints must load with weights_only=True)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def build_datamodule(cfg: DictConfig, *, with_base_label: bool | None = None) -> pl.LightningDataModule:
    """The FewShotDataModule of the configured dataset, fold and shot."""
    from svfseg.data.datamodule import FewShotDataModule

    d = cfg.dataset
    world = world_size_of(cfg)
    if with_base_label is None:
        with_base_label = cfg.method.name == "bam"
    return FewShotDataModule(
        dataset=d.name,
        root=str(d.root),
        fold=cfg.fold,
        shot=cfg.shot,
        train_size=d.train_size,
        eval_size=d.eval_size,
        batch_size=int(d.batch_size) // world,
        eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers,
        seed=cfg.seed,
        eval_seeds=list(d.eval_seeds),
        n_episodes=d.n_episodes,
        train_episodes_for_curve=d.train_episodes_for_curve,
        filter_novel=d.filter_novel,
        coco_split=d.coco_split,
        min_pixels=d.min_pixels,
        source_lists=plain(d.source_lists),
        cache_dir=d.cache_dir,
        with_base_label=with_base_label,
        scale=tuple(d.scale),
    )


def build_module(cfg: DictConfig, *, load_pretrained: bool = True) -> FewShotSegModule:
    train_cls, eval_cls = fold_classes(cfg)
    return FewShotSegModule(
        method=plain(cfg.method),
        backbone=plain(cfg.backbone),
        shot=cfg.shot,
        dataset=cfg.dataset.name,
        fold=cfg.fold,
        num_eval_classes=len(eval_cls),
        num_train_classes=len(train_cls),
        optim=plain(cfg.optim),
        load_pretrained=load_pretrained,
        coco_split=str(cfg.dataset.get("coco_split", "interleaved")),
    )


def build_callbacks(cfg: DictConfig, *, restoring: bool = False) -> list[pl.Callback]:
    """The fine-tune callback first (it must run before anything touches the optimizer), then the config's.

    ``restoring``: the fit resumes from a checkpoint (the strategy then builds its structure only).
    """
    finetune = dict(plain(cfg.finetune))
    callbacks: list[pl.Callback] = [FinetuneCallback(**finetune, restoring=restoring)]
    for node in (cfg.get("callbacks") or {}).values():
        if node is not None and "_target_" in node:
            callbacks.append(hydra.utils.instantiate(node))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None or "_target_" not in node:
            continue
        if name == "wandb":
            from svfseg.lightning.wandb_logging import build_wandb_logger

            loggers.append(build_wandb_logger(node))
        else:
            loggers.append(hydra.utils.instantiate(node))
    return loggers


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], loggers: list[Any]) -> pl.Trainer:
    trainer_cfg = dict(plain(cfg.trainer))
    target = trainer_cfg.pop("_target_", "pytorch_lightning.Trainer")
    if target != "pytorch_lightning.Trainer":
        raise ValueError(f"trainer._target_={target}: svfseg uses one Lightning namespace, pytorch_lightning")
    return pl.Trainer(callbacks=callbacks, logger=loggers or False, **trainer_cfg)


def output_dir(cfg: DictConfig) -> Path:
    return Path(str(cfg.paths.output_dir))
