"""LightningModule that wraps any few-shot method.

The module knows nothing about a particular method or fine-tune strategy: the method comes from the
registry (``method`` / ``backbone`` specs are plain dicts, so checkpoints rebuild the model without
Hydra), and :class:`~svfseg.lightning.callbacks.FinetuneCallback` injects the run's strategy (built once,
with the run's spec) before the optimizer is built. Loading a checkpoint into a fresh module rebuilds the
strategy from the stored spec and applies it in its structure-only form (SVF layers from the stored
shapes, no SVD); the state dict then fills every tensor, so a checkpoint trained with any strategy loads
in about the time of reading it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
from torch import Tensor, nn

from svfseg.data.batch import EpisodeBatch
from svfseg.data.fold import FoldSpec
from svfseg.finetune import FinetuneStrategy
from svfseg.lightning.checkpoint_record import CheckpointRecord
from svfseg.lightning.nonfinite import GuardedTraining, NonFiniteGuard
from svfseg.lightning.optim import OptimConfig, build_optimizer, build_scheduler
from svfseg.messages import ignore_sync_advice
from svfseg.methods.base import FewShotModel, FewShotOutput
from svfseg.methods.factory import build_fewshot_model
from svfseg.metrics import FewShotIoU
from svfseg.run_spec import RunSpec, check_identity
from svfseg.tta import SupportAdapter, TTAOptions

log = logging.getLogger(__name__)

VAL_LOADER, TRAIN_EPISODES_LOADER = 0, 1


class FewShotSegModule(GuardedTraining, pl.LightningModule):
    """Training, validation and test of one few-shot method on one fold.

    Args:
        run: the run's :class:`~svfseg.run_spec.RunSpec`, or it as a plain dict (``RunSpec.to_dict()``, as
            a checkpoint stores it): dataset, fold, shot, COCO split, method and backbone options,
            fine-tune strategy. A checkpoint rebuilds its model from it without Hydra.
        optim: :class:`OptimConfig` fields.
        load_pretrained: read backbone / base-learner weight files (False when a checkpoint follows).
    """

    def __init__(
        self,
        run: RunSpec | dict[str, Any],
        optim: dict[str, Any] | None = None,
        load_pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.spec = run if isinstance(run, RunSpec) else RunSpec.from_dict(run)
        # plain containers: checkpoints load with weights_only=True
        self.save_hyperparameters(
            {"run": self.spec.to_dict(), "optim": optim, "load_pretrained": load_pretrained}
        )
        self.optim_cfg = OptimConfig(**(optim or {}))
        self.model: FewShotModel = build_fewshot_model(
            dict(self.spec.method),
            dict(self.spec.backbone),
            fold=self.spec.fold,
            load_pretrained=load_pretrained,
        )
        self.num_eval_classes = len(self.spec.fold.novel_classes)
        names = self.spec.fold.class_names()
        # metric names per class index (``<prefix>/iou/<name>``): novel classes for val/test, base for the
        # training-episode curve
        self.class_keys = {
            split: [names[c].replace(" ", "_") for c in self.spec.fold.classes(split)]
            for split in ("train", "val")
        }
        self.val_iou = self._metric(self.num_eval_classes)
        self.train_episode_iou = self._metric(len(self.spec.fold.base_classes))
        self.test_ious = nn.ModuleList([self._metric(self.num_eval_classes, keep_episodes=True)])
        self.test_results_per_loader: list[dict[str, Tensor]] = []
        self.finetune_spec: dict[str, Any] | None = None
        self.param_groups: list[dict[str, Any]] | None = None
        # The resolved run config (plain containers), saved in checkpoints so eval.py can rebuild the data.
        self.run_config: dict[str, Any] | None = None
        self.test_results: dict[str, Tensor] = {}
        self.nonfinite = NonFiniteGuard(self.optim_cfg.nonfinite_check_every)
        # Test-time adaptation on the support (eval.py tta.*); off unless configure_tta enables it.
        self.tta = TTAOptions()
        self._tta_adapter: SupportAdapter | None = None

    def configure_tta(self, options: TTAOptions) -> None:
        """Adapt on each test episode's support before predicting its query (docs/tta.md).

        ``steps=0`` keeps the plain test path. A working copy is built here once so that a bad option (no
        SVF layer, no LoRA target) fails before any episode runs; each test run then copies the model
        again on its device (:meth:`on_test_start`).
        """
        if options.enabled:
            SupportAdapter(self.model, options)
        self.tta = options
        self._tta_adapter = None

    def use_evaluation_fold(self, fold: FoldSpec) -> None:
        """Test on another dataset's classes (cross-dataset / cross-domain evaluation): the test metrics,
        their class names and the number of classes follow ``fold``; the model is unchanged."""
        self.eval_fold = fold
        self.num_eval_classes = len(fold.novel_classes)
        names = fold.class_names()
        self.class_keys["val"] = [names[c].replace(" ", "_") for c in fold.novel_classes]
        self.test_ious = nn.ModuleList([self._metric(self.num_eval_classes, keep_episodes=True)])

    @staticmethod
    def _metric(num_classes: int, *, keep_episodes: bool = False) -> FewShotIoU:
        # No per-batch value checks: they would read a flag back from the GPU every batch, and the
        # episodes come from lists whose labels were validated when they were read. Test metrics keep
        # each episode's counts (episodes.json, the bootstrap intervals).
        return FewShotIoU(num_classes, validate_args=False, keep_episodes=keep_episodes)

    # ------------------------------------------------------------------ fine-tuning
    def apply_finetune(
        self, strategy: FinetuneStrategy | None = None, *, from_checkpoint: bool = False
    ) -> None:
        """Apply the run's fine-tune strategy once (``strategy``: as injected by FinetuneCallback; None:
        the run's own, ``self.spec.strategy``); a strategy of other options is refused.

        ``from_checkpoint``: a checkpoint's state dict fills the model next, so SVF builds its layers from
        shapes and runs no SVD (see ``FinetuneStrategy.prepare``).
        """
        own = self.spec.strategy
        if (
            strategy is not None
            and strategy is not own
            and (type(strategy), strategy.options()) != (type(own), own.options())
        ):
            raise ValueError(
                f"fine-tune strategy {strategy!r} differs from this run's finetune {dict(self.spec.finetune)} "
                f"({own!r}); a run is built for one strategy (the trainer's FinetuneCallback injects the run's)"
            )
        if self.param_groups is not None:
            return
        self.param_groups = own.apply(self.model, from_checkpoint=from_checkpoint)
        self.finetune_spec = dict(self.spec.finetune)

    # ------------------------------------------------------------------ steps
    def forward(self, batch: EpisodeBatch, with_target: bool = True) -> FewShotOutput:
        return self.model(
            query_img=batch["query_img"],
            support_img=batch["support_img"],
            support_mask=batch["support_mask"],
            query_mask=batch["query_mask"] if with_target else None,
            class_idx=batch.get("class_idx"),
            query_base_label=batch.get("query_base_label") if with_target else None,
        )

    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> Tensor:
        out = self(batch)
        assert out.loss is not None
        # Recorded on the device; read back every optim.nonfinite_check_every steps (see NonFiniteGuard).
        self.nonfinite.observe_loss(
            out.loss,
            step=self.global_step,
            epoch=self.current_epoch,
            batch_idx=batch_idx,
            episodes=batch.get("episode_idx"),
        )
        if self.nonfinite.check_every == 1:
            self.check_finite()
        batch_size = batch["query_img"].shape[0]
        # no prog_bar: Lightning would read it back every batch; SparseMetricsProgressBar shows it
        self.log("train/loss", out.loss, batch_size=batch_size)
        for name, value in out.losses.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        return out.loss

    def _eval_update(self, metric: FewShotIoU, batch: EpisodeBatch) -> None:
        logits = self(batch, with_target=False).logits
        metric.update_from_logits(
            logits, batch["label_ori"], batch["ori_hw"], batch["class_idx"], self._episode_idx(metric, batch)
        )

    @staticmethod
    def _episode_idx(metric: FewShotIoU, batch: EpisodeBatch) -> Any:
        return batch["episode_idx"] if metric.keep_episodes else None

    def validation_step(self, batch: EpisodeBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        metric = self.val_iou if dataloader_idx == VAL_LOADER else self.train_episode_iou
        self._eval_update(metric, batch)

    def on_test_start(self) -> None:
        # One metric per test loader: the DataModule gives one loader per evaluation seed.
        loaders = self.trainer.test_dataloaders
        n = len(loaders) if isinstance(loaders, (list, tuple)) else 1
        self.test_ious = nn.ModuleList(
            [self._metric(self.num_eval_classes, keep_episodes=True) for _ in range(n)]
        ).to(self.device)
        if self.tta.enabled:  # a copy of the model as it is now, on its device
            self._tta_adapter = SupportAdapter(self.model, self.tta)

    def on_test_end(self) -> None:
        self._tta_adapter = None  # frees the working copy

    def test_step(self, batch: EpisodeBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.tta.enabled:
            self._eval_update(self.test_ious[dataloader_idx], batch)
            return
        if self._tta_adapter is None:
            self._tta_adapter = SupportAdapter(self.model, self.tta)
        logits = self._tta_adapter.predict(batch)
        metric = self.test_ious[dataloader_idx]
        metric.update_from_logits(
            logits, batch["label_ori"], batch["ori_hw"], batch["class_idx"], self._episode_idx(metric, batch)
        )

    def _log_metric(self, prefix: str, metric: FewShotIoU, split: str = "val") -> dict[str, Tensor]:
        if int(metric.n_episodes) == 0 and not self.trainer.world_size > 1:
            return {}
        values = metric.compute()  # counts summed over ranks: every rank logs the same values
        if self.trainer.world_size > 1:
            ignore_sync_advice(prefix)
        self.log(f"{prefix}/miou", values["miou"], sync_dist=False)
        self.log(f"{prefix}/fbiou", values["fbiou"], sync_dist=False)
        self.log(f"{prefix}/n_episodes", values["n_episodes"].float(), sync_dist=False)
        for name, v in zip(self.class_keys[split], values["class_iou"].reshape(-1), strict=True):
            self.log(f"{prefix}/iou/{name}", v, sync_dist=False)
        metric.reset()
        return values

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val", self.val_iou)
        self._log_metric("train_episodes", self.train_episode_iou, split="train")

    def on_test_epoch_end(self) -> None:
        self.test_results_per_loader = [
            self._log_metric("test" if i == 0 else f"test_{i}", metric)
            for i, metric in enumerate(self.test_ious)
        ]
        self.test_results = self.test_results_per_loader[0]

    # ------------------------------------------------------------------ BN policy
    def on_train_epoch_start(self) -> None:
        # Lightning >= 2.2 no longer calls .train() on the whole model each epoch; do it here so that
        # FewShotModel.train re-applies the BN policy (frozen BN stays in eval mode).
        self.model.train()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        if self.param_groups is None:
            raise RuntimeError(
                "no fine-tune strategy was applied before the optimizer was built: add "
                "svfseg.lightning.callbacks.FinetuneCallback to the trainer (conf/callbacks/default.yaml does)"
            )
        optimizer = build_optimizer(self.param_groups, self.optim_cfg)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("set trainer.max_epochs or trainer.max_steps: the lr schedule needs a length")
        scheduler = build_scheduler(optimizer, self.optim_cfg, int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # the non-finite check (GuardedTraining)
        # The run itself is in the hyper-parameters (``run``); the record adds what the spec cannot say.
        record = CheckpointRecord(
            self.spec, strategy_applied=self.finetune_spec is not None, config=self.run_config
        )
        checkpoint["svfseg"] = record.entry()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = CheckpointRecord.read(checkpoint)
        check_identity(
            record.run.identity(),
            self.spec.identity(),
            source="the checkpoint",
            target="this module is",
            fix="load it into a module built for the run that wrote it",
        )
        if record.strategy_applied:
            if record.finetune != dict(self.spec.finetune):
                raise ValueError(
                    f"the checkpoint was trained with finetune {record.finetune} but this module's run has "
                    f"{dict(self.spec.finetune)}; a checkpoint loads into a module of its own strategy"
                )
            # A resumed fit applied the strategy already (FinetuneCallback); a fresh module applies it now.
            self.apply_finetune(from_checkpoint=True)
        if self.run_config is None:
            self.run_config = record.config
