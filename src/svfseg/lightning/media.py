"""Logging callback: what the model predicts on the first validation episodes.

* :class:`ExamplePredictionLogger`: the first validation episodes (a fixed set: the evaluation table does
  not change between epochs) as an image grid, one row per episode: query with its ground truth, support
  with its mask, query with the prediction, ground truth. W&B ``log_image``, TensorBoard ``add_image``,
  and PNG files ``<dirpath>/epoch_<NNN>.png`` when a CSV logger is attached.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from torch import Tensor

from svfseg.data.batch import EpisodeBatch
from svfseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from svfseg.files import atomic_write_bytes
from svfseg.labels import IGNORE_INDEX
from svfseg.lightning.schedule import check_every, due

log = logging.getLogger(__name__)

COLUMNS = ("query + GT", "support + mask", "prediction", "GT")
GT_COLOUR = (0, 200, 0)
SUPPORT_COLOUR = (30, 144, 255)
PRED_COLOUR = (230, 25, 75)
OVERLAY_ALPHA = 0.5
GAP = 2  # pixels between panels (white)
# Loggers the example grid goes to (CSV: as PNG files); with none of them attached nothing is computed.
IMAGE_LOGGERS = (WandbLogger, TensorBoardLogger, CSVLogger)


# ---------------------------------------------------------------------------------------- predictions
def denormalize(images: Tensor) -> np.ndarray:
    """(B,3,H,W) ImageNet-normalised float -> (B,H,W,3) uint8 RGB (see svfseg.data.transforms.to_tensor)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    rgb = (images.detach().float().cpu() * std + mean).clamp(0.0, 1.0) * 255.0
    return rgb.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Blend ``colour`` into the foreground (mask == 1) pixels of an (H,W,3) uint8 image."""
    out = image.astype(np.float32)
    fg = mask == 1
    out[fg] = (1.0 - OVERLAY_ALPHA) * out[fg] + OVERLAY_ALPHA * np.asarray(colour, np.float32)
    return out.round().astype(np.uint8)


def mask_panel(mask: np.ndarray) -> np.ndarray:
    """Ground truth as an image: foreground white, background black, ignored (255) pixels grey."""
    out = np.zeros((*mask.shape, 3), np.uint8)
    out[mask == 1] = 255
    out[mask == IGNORE_INDEX] = 128
    return out


def foreground_iou(pred: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the foreground on the non-ignored pixels (NaN when neither has foreground)."""
    valid = mask != IGNORE_INDEX
    p, g = (pred == 1) & valid, (mask == 1) & valid
    union = int((p | g).sum())
    return float("nan") if union == 0 else int((p & g).sum()) / union


def _header_scale(width: int) -> tuple[float, int]:
    scale = max(0.3, width / 260.0)
    (_, h), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    return scale, h + base + 4


def header_height(width: int) -> int:
    """Pixel height of the column-title strip above a grid of panels ``width`` pixels wide."""
    return _header_scale(width)[1]


def panel_origin(row: int, col: int, height: int, width: int) -> tuple[int, int]:
    """Top-left (y, x) of a panel in the grid :func:`render_prediction_grid` draws."""
    return header_height(width) + row * (height + GAP), col * (width + GAP)


def render_prediction_grid(
    query_img: Tensor, query_mask: Tensor, support_img: Tensor, support_mask: Tensor, pred: Tensor
) -> np.ndarray:
    """(rows, 4) panels as one (H', W', 3) uint8 RGB image, rows = episodes, columns = :data:`COLUMNS`.

    ``query_img`` (B,3,H,W) and ``support_img`` (B,3,H,W) normalised images (first support of each
    episode), masks (B,H,W) with values {0, 1, 255}, ``pred`` (B,H,W) in {0, 1}.
    """
    queries, supports = denormalize(query_img), denormalize(support_img)
    q_masks, s_masks = query_mask.cpu().numpy(), support_mask.cpu().numpy()
    preds = pred.cpu().numpy()
    n, h, w = q_masks.shape
    scale, top = _header_scale(w)
    grid = np.full((top + n * h + (n - 1) * GAP, 4 * w + 3 * GAP, 3), 255, np.uint8)
    for col, title in enumerate(COLUMNS):
        cv2.putText(
            grid, title, (col * (w + GAP) + 2, top - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1
        )
    for row in range(n):
        panels = (
            overlay(queries[row], q_masks[row], GT_COLOUR),
            overlay(supports[row], s_masks[row], SUPPORT_COLOUR),
            overlay(queries[row], preds[row], PRED_COLOUR),
            mask_panel(q_masks[row]),
        )
        for col, panel in enumerate(panels):
            y, x = panel_origin(row, col, h, w)
            grid[y : y + h, x : x + w] = panel
    return grid


class ExamplePredictionLogger(pl.Callback):
    """Logs the predictions on the first ``n_examples`` validation episodes every ``every_n_epochs`` epochs.

    The episodes are taken from the first batches of the (first) validation loader, whose episode table
    is fixed, so every epoch shows the same episodes. Only rank 0 collects and logs.
    """

    def __init__(
        self,
        n_examples: int = 4,
        every_n_epochs: int = 1,
        dirpath: str | Path | None = None,
        tag: str = "val/examples",
    ) -> None:
        super().__init__()
        if int(n_examples) < 1:
            raise ValueError(f"n_examples must be >= 1, got {n_examples}")
        self.n_examples = int(n_examples)
        self.every_n_epochs = check_every(every_n_epochs)
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.tag = tag
        self._rows: list[dict[str, Tensor]] = []
        self._collecting = False

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []
        shows_images = any(isinstance(lg, IMAGE_LOGGERS) for lg in trainer.loggers)
        self._collecting = shows_images and trainer.is_global_zero and due(trainer, self.every_n_epochs)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: EpisodeBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        have = sum(r["pred"].shape[0] for r in self._rows)
        if not self._collecting or dataloader_idx != 0 or have >= self.n_examples:
            return
        k = min(self.n_examples - have, batch["query_img"].shape[0])
        part = {key: v[:k] for key, v in batch.items() if isinstance(v, Tensor)}
        with torch.no_grad():
            pred = pl_module(part, with_target=False).logits.argmax(dim=1)
        self._rows.append(
            {
                "query_img": part["query_img"].cpu(),
                "query_mask": part["query_mask"].cpu(),
                "support_img": part["support_img"][:, 0].cpu(),
                "support_mask": part["support_mask"][:, 0].cpu(),
                "pred": pred.cpu(),
                "class_id": part.get("class_id", torch.full((k,), -1)).cpu(),
            }
        )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._collecting or not self._rows:
            return
        self._collecting = False
        rows = {key: torch.cat([r[key] for r in self._rows]) for key in self._rows[0]}
        self._rows = []
        grid = render_prediction_grid(
            rows["query_img"], rows["query_mask"], rows["support_img"], rows["support_mask"], rows["pred"]
        )
        ious = [foreground_iou(p, m) for p, m in zip(rows["pred"].numpy(), rows["query_mask"].numpy())]
        caption = f"epoch {trainer.current_epoch}; rows (class: fg IoU): " + ", ".join(
            f"{int(c)}: {iou:.2f}" for c, iou in zip(rows["class_id"].tolist(), ious)
        )
        self.log_grid(trainer, grid, caption)

    def log_grid(self, trainer: pl.Trainer, grid: np.ndarray, caption: str) -> None:
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=self.tag, images=[grid], step=step, caption=[caption])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(self.tag, grid, global_step=step, dataformats="HWC")
            elif isinstance(logger, CSVLogger):
                path = self.png_path(trainer)
                path.parent.mkdir(parents=True, exist_ok=True)
                ok, png = cv2.imencode(".png", np.ascontiguousarray(grid[..., ::-1]))
                try:
                    if not ok:
                        raise OSError(f"could not encode {path} as PNG")
                    atomic_write_bytes(path, png.tobytes())  # a failed write keeps the previous PNG
                except OSError as err:
                    log.warning("could not write the example predictions: %s", err)

    def png_path(self, trainer: pl.Trainer) -> Path:
        root = self.dirpath if self.dirpath is not None else Path(trainer.default_root_dir) / "predictions"
        return root / f"epoch_{trainer.current_epoch:03d}.png"
