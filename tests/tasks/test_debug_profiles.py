"""The debug profiles bound every stage they can run, BAM's stage 1 included.

``stage=base method=bam dataset=coco debug=tiny`` once ran BAM's 20 full stage-1 epochs with the whole
validation list (17 epochs in 17 minutes before it was stopped): the profile bounded stage 2's keys only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from svfseg.config_checks import ConfigError, check_train_config
from svfseg.tasks.base_stage import base_trainer_arguments
from svfseg.tasks.builders import trainer_arguments
from tests.helpers.hydra import compose_config

DATASETS = ("pascal", "coco", "synthetic")


def _cfg(tmp_path: Path, *overrides: str):
    return compose_config("train", [f"paths.output_dir={tmp_path}", "method=bam", *overrides])


@pytest.mark.parametrize("dataset", DATASETS)
def test_tiny_bounds_bam_stage_1_like_stage_2(dataset: str, tmp_path: Path) -> None:
    full = _cfg(tmp_path, "stage=base", f"dataset={dataset}")
    cfg = _cfg(tmp_path, "stage=base", f"dataset={dataset}", "debug=tiny")
    stage = cfg.dataset.base_stage
    assert full.dataset.base_stage.epochs > 1 and full.dataset.base_stage.limit_val_batches is None
    assert (stage.epochs, stage.batch_size, stage.train_size, stage.eval_size) == (1, 2, 65, 65)
    assert stage.eval_batch_size <= 4
    args = base_trainer_arguments(cfg)
    assert (args["max_epochs"], args["limit_train_batches"], args["limit_val_batches"]) == (1, 4, 3)
    assert (args["accelerator"], args["devices"]) == ("cpu", 1)
    assert "limit_val_batches" not in base_trainer_arguments(full)  # the reference validates on all of val
    # stage 2 of the same profile is bounded the same way
    meta = trainer_arguments(_cfg(tmp_path, f"dataset={dataset}", "debug=tiny"), bn_trains=False)
    assert (meta["max_epochs"], meta["limit_train_batches"]) == (1, 4)


@pytest.mark.parametrize("dataset", DATASETS)
def test_fdr_runs_one_batch_of_each_stage(dataset: str, tmp_path: Path) -> None:
    for stage in ("base", "meta"):
        cfg = _cfg(tmp_path, f"stage={stage}", f"dataset={dataset}", "debug=fdr")
        args = base_trainer_arguments(cfg) if stage == "base" else trainer_arguments(cfg, bn_trains=False)
        assert args["fast_dev_run"] is True  # Lightning: one training and one validation batch, then stop


def test_a_misspelt_stage_1_key_fails_at_start(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "stage=base", "dataset=synthetic", "debug=tiny", "+dataset.base_stage.epoch=1")
    with pytest.raises(ConfigError, match=r"dataset\.base_stage\.epoch: not a key of BAM's stage 1"):
        check_train_config(cfg)
