"""tools/plain_loop.py: a bare PyTorch loop over train.py's run reproduces train.py's losses step by step.

Its use is a diagnosis (does a run that does not learn fail in the loop, or in the model and data?), so
it must train what train.py trains: the same first batches, the same weights, the same lr schedule. The
reference is train.py itself, in process, with every step's loss in ``csv/metrics.csv``.
"""

from __future__ import annotations

import csv
import importlib
from pathlib import Path

import pytest

from svfseg.tasks.train import train
from tests.helpers.hydra import tiny_train_config

REPO = Path(__file__).resolve().parents[2]
STEPS = 6  # over two epochs of the tiny profile's 4 batches: the second epoch's order is drawn too
COMMON = [
    "finetune=svf",  # SVF layers, trained singular values, a head lr and a backbone lr
    "trainer.max_epochs=2",
    "dataset.epochs=2",
    f"trainer.max_steps={STEPS}",
    "trainer.log_every_n_steps=1",
    "test_after_fit=false",
]


@pytest.fixture
def plain_loop(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    return importlib.import_module("plain_loop")


def test_the_plain_loop_reproduces_train_py_losses_and_lrs(
    synthetic_pascal, tmp_path: Path, plain_loop
) -> None:
    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(root, tmp_path / "train", min_pixels=min_pixels, extra=COMMON)
    train(cfg)
    with (tmp_path / "train" / "csv" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    losses = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    lrs = {int(r["step"]): float(r["lr-SGD/head"]) for r in rows if r.get("lr-SGD/head")}
    assert sorted(losses) == list(range(STEPS))

    overrides = [
        "dataset=synthetic",
        "debug=tiny",
        f"dataset.root={root}",
        f"dataset.min_pixels={min_pixels}",
        f"paths.output_dir={tmp_path / 'plain'}",
        *COMMON,
    ]
    records = list(plain_loop.plain_loop(overrides, STEPS, eval_at={STEPS}))
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(STEPS))
    assert [r["epoch"] for r in steps] == [0, 0, 0, 0, 1, 1]
    for r in steps:
        assert r["loss"] == pytest.approx(losses[r["step"]], rel=1e-5, abs=1e-7), r
        if r["step"] in lrs:
            assert r["lr"] == pytest.approx(lrs[r["step"]], rel=1e-9), r
    (evaluation,) = [r for r in records if "after_steps" in r]
    assert evaluation["after_steps"] == STEPS
    for part in ("val", "train_episodes"):
        assert 0.0 <= evaluation[part]["miou"] <= 100.0 and 0.0 <= evaluation[part]["predicted_fg"] <= 1.0
