"""DDP fidelity checked without processes: batch sizes are totals everywhere, SyncBN exactly where BN trains."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig

from svfseg.config_checks import ConfigError, check_train_config, sync_batchnorm
from svfseg.finetune import STRATEGIES
from svfseg.run_spec import RunSpec
from svfseg.tasks.builders import build_datamodule, trainer_arguments
from tests.hydra_helpers import compose_config


def _cfg(tmp_path: Path, extra: list[str]) -> DictConfig:
    return compose_config(
        "train", ["dataset=synthetic", "debug=tiny", f"paths.output_dir={tmp_path}", *extra]
    )


@pytest.mark.parametrize(
    ("overrides", "key", "value", "world"),
    [
        (
            ["trainer.devices=4", "dataset.batch_size=8", "dataset.eval_batch_size=6"],
            "dataset.eval_batch_size",
            6,
            4,
        ),
        (
            [
                "trainer.devices=4",
                "dataset.batch_size=8",
                "dataset.eval_batch_size=8",
                "dataset.base_stage.batch_size=6",
            ],
            "dataset.base_stage.batch_size",
            6,
            4,
        ),
        (
            ["trainer.devices=2", "dataset.batch_size=4", "dataset.base_stage.eval_batch_size=5"],
            "dataset.base_stage.eval_batch_size",
            5,
            2,
        ),
    ],
)
def test_every_batch_size_is_a_total_that_must_divide(
    tmp_path: Path, overrides: list[str], key: str, value: int, world: int
) -> None:
    cfg = _cfg(tmp_path, overrides)
    with pytest.raises(ConfigError, match=rf"^{key}={value} is the total batch over {world} processes"):
        check_train_config(cfg)


def test_each_process_gets_its_share_of_every_batch(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, ["trainer.devices=2", "dataset.batch_size=4", "dataset.eval_batch_size=6"])
    dm = build_datamodule(cfg, RunSpec.from_config(cfg))
    assert (dm.batch_size, dm.eval_batch_size) == (2, 3)


@pytest.mark.parametrize(
    ("trainer", "bn_trains", "expected"),
    [
        (
            {"accelerator": "gpu", "devices": 4, "sync_batchnorm": "auto"},
            True,
            True,
        ),  # finetune=bn, BAM stage 1
        (
            {"accelerator": "gpu", "devices": 4, "sync_batchnorm": "auto"},
            False,
            False,
        ),  # frozen BN: nothing to sync
        ({"accelerator": "gpu", "devices": 1, "sync_batchnorm": "auto"}, True, False),  # one process
        ({"accelerator": "cpu", "devices": 2, "sync_batchnorm": "auto"}, True, False),  # no CPU kernel
        ({"accelerator": "gpu", "devices": 4, "sync_batchnorm": False}, True, False),  # forced off
        ({"accelerator": "gpu", "devices": 4, "sync_batchnorm": True}, False, True),  # forced on
    ],
)
def test_sync_batchnorm_auto_follows_whether_bn_trains(
    trainer: dict, bn_trains: bool, expected: bool
) -> None:
    assert sync_batchnorm(trainer, bn_trains) is expected


def test_sync_batchnorm_per_strategy_and_bad_values(tmp_path: Path) -> None:
    for finetune, expected in (("bn", True), ("svf", False), ("full", False), ("freeze", False)):
        gpus = ["trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=4", "dataset.eval_batch_size=8"]
        cfg = _cfg(tmp_path, [f"finetune={finetune}", *gpus, "dataset.batch_size=8"])
        bn_trains = not STRATEGIES[
            RunSpec.from_config(cfg).finetune["name"]
        ].frozen_bn  # as build_trainer does
        assert trainer_arguments(cfg, bn_trains=bn_trains)["sync_batchnorm"] is expected, finetune
    with pytest.raises(
        ConfigError, match=r"trainer\.sync_batchnorm='yes' is invalid: use auto, true or false"
    ):
        check_train_config(_cfg(tmp_path, ["trainer.sync_batchnorm=yes"]))
    cpu = {"accelerator": "cpu", "devices": 2, "sync_batchnorm": True}
    with pytest.raises(ConfigError, match=r"sync_batchnorm=true needs GPUs"):
        sync_batchnorm(cpu, True)
