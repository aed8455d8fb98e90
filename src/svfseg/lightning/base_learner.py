"""BAM's stage 1 as a LightningModule: PSPNet on a fold's base classes (``python train.py stage=base``).

Recipe (BAM's stage 1): base class c -> index+1, novel classes -> background; SGD momentum 0.9, wd 1e-4,
poly 0.9; BN trains (no fix_bn). BAM's ``index_split`` is ``encoder_lr_mult``: the encoder runs at that
fraction of the head lr. Validation scores every image at its original size, as the meta stage does; the
task that fits it and writes the base learner is :mod:`svfseg.tasks.base_stage`.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex

from svfseg.backbones import build_backbone
from svfseg.labels import IGNORE_INDEX
from svfseg.lightning.nonfinite import GuardedTraining, NonFiniteGuard
from svfseg.lightning.optim import OptimConfig, build_scheduler
from svfseg.methods.pspnet import PSPNet
from svfseg.metrics.original_size import mask_at_original_size


class BaseLearnerModule(GuardedTraining, pl.LightningModule):
    """PSPNet on base classes with BAM's two-speed SGD (encoder vs PPM + classifier)."""

    def __init__(
        self,
        backbone: dict[str, Any],
        num_classes: int,
        lr: float,
        encoder_lr_mult: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        poly_power: float = 0.9,
        nonfinite_check_every: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.nonfinite = NonFiniteGuard(nonfinite_check_every, what="base-learner loss")
        spec = dict(backbone)
        name = spec.pop("name")
        spec["dilation"] = "uniform"  # PSPNet / BAM always use the uniform dilation patch
        self.model = PSPNet(build_backbone(name, **spec), num_classes=num_classes)
        self.val_iou = MulticlassJaccardIndex(
            num_classes=num_classes, ignore_index=IGNORE_INDEX, average="none"
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        _, loss = self.model(batch["image"], batch["label"])
        assert loss is not None
        self.nonfinite.observe_loss(
            loss, step=self.global_step, epoch=self.current_epoch, batch_idx=batch_idx
        )
        if self.nonfinite.check_every == 1:
            self.check_finite()
        self.log("base/loss", loss, batch_size=batch["image"].shape[0])  # shown by the progress bar
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits, _ = self.model(batch["image"])
        for i, (h, w) in enumerate(batch["ori_hw"]):  # scored at the original size, as the meta stage is
            pred = mask_at_original_size(logits[i], int(h), int(w))
            self.val_iou.update(pred[None], batch["label_ori"][i : i + 1, :h, :w])

    def on_validation_epoch_end(self) -> None:
        per_class = self.val_iou.compute()
        # background (index 0) excluded: BAM's code reports mIoU over the base classes
        self.log("base/val_miou", per_class[1:].mean())
        self.val_iou.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        encoder = list(self.model.backbone.parameters())
        head = list(self.model.ppm.parameters()) + list(self.model.cls.parameters())
        optimizer = torch.optim.SGD(
            [
                {"params": encoder, "lr": hp.lr * hp.encoder_lr_mult, "name": "encoder"},
                {"params": head, "lr": hp.lr, "name": "head"},
            ],
            lr=hp.lr,
            momentum=hp.momentum,
            weight_decay=hp.weight_decay,
        )
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("set dataset.base_stage.epochs: the poly schedule needs a length")
        cfg = OptimConfig(lr=hp.lr, schedule="poly", poly_power=hp.poly_power)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": build_scheduler(optimizer, cfg, int(total)), "interval": "step"},
        }
