"""DDP fidelity checked without processes: batch sizes are totals everywhere, SyncBN exactly where BN trains."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from svfseg.config_checks import (
    ConfigError,
    check_devices,
    check_train_config,
    check_train_run,
    sync_batchnorm,
    world_size,
)
from svfseg.finetune import STRATEGIES
from svfseg.run_spec import RunSpec
from svfseg.tasks.builders import build_datamodule, trainer_arguments
from svfseg.tasks.resolve import TrainRun
from tests.helpers.hydra import compose_config


def _cfg(tmp_path: Path, extra: list[str]) -> DictConfig:
    # checks only: an existing folder stands in for the synthetic data's root (checked at start)
    return compose_config(
        "train",
        [
            "dataset=synthetic",
            "debug=tiny",
            f"paths.output_dir={tmp_path}",
            f"dataset.root={tmp_path}",
            *extra,
        ],
    )


@pytest.mark.parametrize(
    ("overrides", "key", "value", "world"),
    [
        (["trainer.devices=4", "dataset.batch_size=6"], "dataset.batch_size", 6, 4),
        (
            ["stage=base", "method=bam", "trainer.devices=4", "dataset.base_stage.batch_size=6"],
            "dataset.base_stage.batch_size",
            6,
            4,
        ),
        (
            ["stage=base", "method=bam", "trainer.devices=2", "dataset.base_stage.batch_size=5"],
            "dataset.base_stage.batch_size",
            5,
            2,
        ),
    ],
)
def test_a_training_batch_is_a_total_that_must_divide(
    tmp_path: Path, overrides: list[str], key: str, value: int, world: int
) -> None:
    cfg = _cfg(tmp_path, overrides)
    with pytest.raises(
        ConfigError, match=rf"^{key}={value} is the total training batch over {world} processes"
    ):
        check_train_config(cfg)


@pytest.mark.parametrize(
    "key", ["dataset.eval_batch_size", "dataset.base_stage.eval_batch_size", "dataset.base_stage.batch_size"]
)
def test_batches_that_do_not_define_the_meta_stage_never_refuse_it(tmp_path: Path, key: str) -> None:
    cfg = _cfg(tmp_path, ["trainer.devices=4", "dataset.batch_size=8", f"{key}=7"])
    check_train_config(cfg)


@pytest.mark.parametrize("value", [0, -2, "abc", 2.5])
def test_an_evaluation_batch_must_still_be_a_positive_integer(tmp_path: Path, value: object) -> None:
    cfg = _cfg(tmp_path, ["trainer.devices=2", "dataset.batch_size=4", f"dataset.eval_batch_size={value}"])
    with pytest.raises(
        ConfigError, match=r"^dataset\.eval_batch_size=.* is invalid: a batch size is a positive"
    ):
        check_train_config(cfg)


def test_each_process_gets_its_share_of_every_batch(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, ["trainer.devices=2", "dataset.batch_size=4", "dataset.eval_batch_size=6"])
    dm = build_datamodule(TrainRun.from_config(cfg))
    assert (dm.batch_size, dm.eval_batch_size) == (2, 3)
    odd = _cfg(tmp_path, ["trainer.devices=2", "dataset.batch_size=4", "dataset.eval_batch_size=5"])
    dm = build_datamodule(TrainRun.from_config(odd))
    assert (dm.batch_size, dm.eval_batch_size) == (2, 3)  # 5 over 2 processes: at most 3 each


def test_evaluation_does_not_hold_the_training_batch_to_its_world_size(tmp_path: Path) -> None:
    """A checkpoint trained with batch 8 on 4 processes evaluates on 3 (eval.py builds with training=False)."""
    cfg = _cfg(tmp_path, ["trainer.devices=3", "dataset.batch_size=8", "dataset.eval_batch_size=8"])
    with pytest.raises(ConfigError, match=r"^dataset\.batch_size=8 is the total training batch over 3"):
        build_datamodule(TrainRun.from_config(cfg))
    dm = build_datamodule(TrainRun.from_config(cfg, training=False))
    assert dm.eval_batch_size == 3


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


@pytest.mark.parametrize(
    ("overrides", "shown"),
    [
        (["trainer.devices=2", "trainer.strategy=ddp_spawn"], "trainer.strategy=ddp_spawn"),
        (["trainer.devices=1", "trainer.strategy=ddp_spawn"], "trainer.strategy=ddp_spawn"),
        (["trainer.devices=2", "trainer.strategy=ddp_fork"], "trainer.strategy=ddp_fork"),
        (["trainer.devices=2", "trainer.strategy=ddp_notebook"], "trainer.strategy=ddp_notebook"),
        (
            ["trainer.devices=2", "trainer.strategy=ddp_spawn_find_unused_parameters_true"],
            "trainer.strategy=ddp_spawn_find_unused_parameters_true",
        ),
        (
            [
                "trainer.devices=2",
                "~trainer.strategy",
                "+trainer.strategy._target_=pytorch_lightning.strategies.DDPStrategy",
                "+trainer.strategy.start_method=spawn",
            ],
            r"trainer.strategy.start_method=spawn \(DDPStrategy\)",
        ),
    ],
)
def test_strategies_that_run_ranks_in_child_processes_are_refused_at_start(
    tmp_path: Path, overrides: list[str], shown: str
) -> None:
    """Their ranks' test metrics and episodes never reach the process that writes metrics.json (train.py
    failed after the fit, eval.py with a KeyError)."""
    with pytest.raises(
        ConfigError, match=rf"{shown} runs every rank in a child process .* trainer.strategy=ddp"
    ):
        check_train_config(_cfg(tmp_path, overrides))


@pytest.mark.parametrize("strategy", ["ddp", "ddp_find_unused_parameters_true", "auto"])
def test_strategies_that_start_one_script_per_rank_pass(tmp_path: Path, strategy: str) -> None:
    check_train_config(_cfg(tmp_path, ["trainer.devices=2", f"trainer.strategy={strategy}"]))


@pytest.mark.parametrize("devices", ["0", "'0'", "-2", "[]", "-1", "[0]"])
def test_cpu_device_requests_lightning_would_refuse_are_refused_at_start(
    tmp_path: Path, devices: str
) -> None:
    """``trainer.devices=0`` used to pass the checks (counted as one process), and ``-1`` or ``[0]`` on the
    CPU too; Lightning's Trainer then stopped with a traceback, after the run folder was claimed and the
    model built."""
    with pytest.raises(
        ConfigError,
        match=r"(?m)^trainer\.devices=.* is invalid for trainer\.accelerator=cpu: give on the CPU",
    ):
        check_train_config(_cfg(tmp_path, [f"trainer.devices={devices}"]))


def test_zero_machines_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"(?m)^trainer\.num_nodes=0 is invalid: the number of machines"):
        check_train_config(_cfg(tmp_path, ["trainer.num_nodes=0"]))


@pytest.mark.parametrize(
    ("devices", "valid"),
    [
        *[(4, True), ("auto", True), (-1, True), ([0, 1], True), ("0,1", True), ("2", True)],
        *[(0, False), ([], False), ([-1], False), (-2, False), ("none", False)],
    ],
)
def test_gpu_device_requests_follow_lightnings_forms(devices: object, valid: bool) -> None:
    trainer = OmegaConf.create({"accelerator": "gpu", "devices": devices, "num_nodes": 1})
    if valid:
        check_devices(trainer)
    else:
        with pytest.raises(ConfigError, match=r"is invalid for trainer\.accelerator=gpu: give a count >= 1"):
            check_devices(trainer)


@pytest.mark.parametrize(
    ("devices", "world"), [(1, 1), (4, 4), ("2", 2), (-1, 1), ("auto", 1), ([0, 1], 2), ("0,1", 2)]
)
def test_world_size_counts_processes_not_characters(devices: object, world: int) -> None:
    """``devices: auto`` counted as 4 processes (the length of the string), so on one GPU the checks split
    the training batch by 4 (batch 8 trained as 2 per step); ``"0,1"`` counted as 3."""
    trainer = OmegaConf.create({"accelerator": "gpu", "devices": devices, "num_nodes": 2})
    assert world_size(trainer) == 2 * world


def test_auto_devices_keep_the_whole_training_batch(tmp_path: Path) -> None:
    run = TrainRun.from_checked(
        cfg := _cfg(tmp_path, ["trainer.devices=auto", "dataset.batch_size=8"]), check_train_run(cfg)
    )
    assert (run.world_size, run.batch_size) == (1, 8)


@pytest.mark.parametrize(
    ("overrides", "shown"),
    [
        (["dataset.epochs=0"], r"dataset\.epochs=0 trains nothing: the run would test and report untrained"),
        (["trainer.max_steps=0"], r"trainer\.max_steps=0 trains nothing"),
        (["trainer.max_epochs=0"], r"trainer\.max_epochs=0 trains nothing"),
        (
            ["stage=base", "method=bam", "dataset.base_stage.epochs=0"],
            r"dataset\.base_stage\.epochs=0 trains nothing",
        ),
        (["dataset.epochs=-3"], r"dataset\.epochs=-3 is invalid: an integer >= 1, or -1 for no limit"),
        (["dataset.epochs=-1"], r"dataset\.epochs=-1 and trainer\.max_steps=-1 never end the fit"),
    ],
)
def test_a_fit_that_trains_nothing_or_never_ends_is_refused_at_start(
    tmp_path: Path, overrides: list[str], shown: str
) -> None:
    """``dataset.epochs=0`` used to fit nothing and still test the untrained weights and write their scores
    to metrics.json as the run's result."""
    with pytest.raises(ConfigError, match=rf"(?m)^{shown}"):
        check_train_config(_cfg(tmp_path, overrides))


def test_a_fit_with_one_limit_passes(tmp_path: Path) -> None:
    check_train_config(_cfg(tmp_path, ["dataset.epochs=-1", "trainer.max_steps=5"]))
    check_train_config(_cfg(tmp_path, ["trainer.max_steps=3"]))  # with the epochs of the config
    check_train_config(_cfg(tmp_path, ["stage=base", "method=bam", "dataset.base_stage.epochs=1"]))


@pytest.mark.parametrize(
    "overrides",
    [["trainer.devices=2"], ["trainer.devices=2", "trainer.strategy=ddp"], ["trainer.devices='2'"]],
)
def test_multirun_refuses_every_strategy_that_relaunches_the_script_per_rank(
    tmp_path: Path, overrides: list[str]
) -> None:
    """``strategy: auto`` on several devices is DDP with Lightning's script launcher (measured:
    ``pl.Trainer(accelerator="cpu", devices=2)`` picks DDPStrategy with _SubprocessScriptLauncher), so a
    ``-m`` sweep over it would start a sweep per rank like ``strategy=ddp``; before, only a strategy named
    ``ddp`` was refused."""
    with pytest.raises(ConfigError, match=r"^hydra multirun \(-m\) cannot drive multi-process DDP"):
        check_train_config(_cfg(tmp_path, overrides), multirun=True)
    check_train_config(_cfg(tmp_path, overrides))  # the same run without -m starts
