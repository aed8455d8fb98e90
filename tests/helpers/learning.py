"""The learning runs of tests/tasks/test_learning.py, shared with benchmarks/learning_spread.py (which measured
the margins the tests assert): one config, one way to score trivial masks, one result record."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svfseg.labels import IGNORE_INDEX
from svfseg.pretrain import ProxySpec
from svfseg.tasks.builders import build_datamodule
from svfseg.tasks.resolve import TrainRun
from svfseg.tasks.train import train
from tests.helpers.hydra import tiny_train_config

EPOCHS = 8
# The proxy the learning tests start from: 0.125 width keeps each run to seconds on 2 cores.
LEARNING_PROXY = ProxySpec(width_mult=0.125, n_images=2048, steps=300)


def learning_overrides(weights: Path | None, finetune: str, seed: int) -> list[str]:
    return [
        f"finetune={finetune}",
        f"backbone.pretrained={weights if weights is not None else 'null'}",
        f"backbone.width_mult={LEARNING_PROXY.width_mult:g}",
        f"trainer.max_epochs={EPOCHS}",
        "trainer.limit_train_batches=1.0",
        "trainer.log_every_n_steps=1",
        "trainer.deterministic=true",
        "dataset.batch_size=4",
        "dataset.n_episodes=60",
        "dataset.train_episodes_for_curve=0",
        "optim.lr=0.05",
        *([] if finetune == "freeze" else ["finetune.backbone_lr_mult=1.0"]),
        f"seed={seed}",
    ]


def trivial_scores(loader) -> dict[str, float]:
    """mIoU of an all-foreground mask and FB-IoU of an all-background mask, from the raw episode labels
    with plain numpy (independent of svfseg.metrics)."""
    fg_pixels: dict[int, int] = {}
    valid_pixels: dict[int, int] = {}
    bg_total = valid_total = 0
    for batch in loader:
        for label, (h, w), cls in zip(batch["label_ori"], batch["ori_hw"], batch["class_idx"]):
            lab = label[: int(h), : int(w)].numpy()
            valid = lab != IGNORE_INDEX
            c = int(cls)
            fg_pixels[c] = fg_pixels.get(c, 0) + int((lab == 1).sum())
            valid_pixels[c] = valid_pixels.get(c, 0) + int(valid.sum())
            bg_total += int((lab == 0).sum())
            valid_total += int(valid.sum())
    n = len(loader.dataset.table.classes)
    # all foreground: I = fg pixels, U = every valid pixel, per class; unsampled classes count 0
    all_fg_miou = sum(fg_pixels[c] / valid_pixels[c] for c in valid_pixels) / n
    # all background: background IoU = bg / valid, foreground IoU = 0
    all_bg_fbiou = (bg_total / valid_total + 0.0) / 2
    return {"all_fg_miou": all_fg_miou, "all_bg_fbiou": all_bg_fbiou, "n_classes": n}


def run_learning(
    data: tuple[Path, int],
    out: Path,
    weights: Path | None,
    *,
    finetune: str = "svf",
    seed: int = 0,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """Train one short run; returns test scores, the trivial scores, per-epoch mean losses and s/s0."""
    root, min_pixels = data
    cfg = tiny_train_config(
        root, out, min_pixels=min_pixels, extra=[*learning_overrides(weights, finetune, seed), *(extra or [])]
    )
    metrics = train(cfg)
    with (out / "csv" / "metrics.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/loss")]
    per_epoch: dict[int, list[float]] = {}
    for r in rows:
        per_epoch.setdefault(int(float(r["epoch"])), []).append(float(r["train/loss"]))
    datamodule = build_datamodule(TrainRun.from_config(cfg))
    datamodule.setup("test")
    record = json.loads((out / "metrics.json").read_text())
    result = {
        "miou": float(metrics["miou"]),
        "fbiou": float(metrics["fbiou"]),
        "class_iou": [float(v["iou"]) for v in record["class_iou"].values()],
        "record_miou": float(record["miou"]),
        "epoch_loss": [float(np.mean(per_epoch[e])) for e in sorted(per_epoch)],
        "steps_per_epoch": min(len(v) for v in per_epoch.values()),
        **trivial_scores(datamodule.eval_dataloader(int(cfg.dataset.eval_seeds[0]))),
        "threads": torch.get_num_threads(),
    }
    if finetune.startswith("svf"):
        result["max_s_change"] = max_singular_value_change(Path(metrics["checkpoint"]))
    return result


def max_singular_value_change(checkpoint: Path) -> float:
    """Largest |s / s0 - 1| over the SVF layers of a checkpoint (read from the state dict alone)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    changes = [
        float((state[k] / state[k[: -len(".s")] + ".s0"] - 1).abs().max())
        for k in state
        if k.endswith(".s") and k[: -len(".s")] + ".s0" in state
    ]
    if not changes:
        raise ValueError(f"{checkpoint} holds no SVF singular values (keys ending in .s with .s0)")
    return max(changes)
