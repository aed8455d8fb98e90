"""Every paper row starts on 1, 2, 4 and 8 GPUs, composed exactly as a user launches it.

``python train.py experiment=<row> trainer=ddp trainer.devices=N``: each ``conf/experiment`` file (ViT rows
included) is composed with the 4-GPU trainer at N devices and run through the start-up checks. The
machine is taken to have CUDA (the checks ask ``torch.cuda.is_available``), and every file the config
names (ImageNet weights, BAM's base learner) exists as a stand-in, so the only refusals left are those of
the configuration itself, and there must be none. The per-process batches that the run would use are
checked too: the training batch is the total split exactly, the evaluation batch is split as evenly as
possible (docs/design.md, "DDP").

The documented refusals, each named by a test below: a training batch that does not divide by the world
size (the paper's 8 on 16 GPUs; BAM stage 1's 12 on 8 GPUs).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from svfseg.config_checks import ConfigError, check_train_config, stage_batch_sizes
from svfseg.run_spec import RunSpec
from svfseg.tasks.builders import build_datamodule
from svfseg.tasks.resolve import TrainRun
from tests.helpers.base_learner import write_base_learner_record
from tests.helpers.hydra import CONF_DIR, compose_config

EXPERIMENT_DIR = CONF_DIR / "experiment"
ROWS = sorted(
    p.relative_to(EXPERIMENT_DIR).with_suffix("").as_posix() for p in EXPERIMENT_DIR.rglob("*.yaml")
)
WORLD_SIZES = (1, 2, 4, 8)


@pytest.fixture(autouse=True)
def _a_gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The start-up checks see a CUDA machine (the trainer=ddp config asks for GPUs)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def _launch_config(
    row: str | None, devices: int, tmp_path: Path, extra: list[str] | None = None
) -> DictConfig:
    """The composed config of ``python train.py experiment=<row> trainer=ddp trainer.devices=<devices>``."""
    cfg = compose_config(
        "train",
        [
            *([f"experiment={row}"] if row else []),
            "trainer=ddp",
            f"trainer.devices={devices}",
            f"paths.weights_dir={tmp_path / 'initmodel'}",
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.output_dir={tmp_path / 'out'}",
            *(extra or []),
        ],
    )
    pretrained = cfg.backbone.get("pretrained")  # the files a user has fetched or trained
    if pretrained is not None:
        Path(str(pretrained)).parent.mkdir(parents=True, exist_ok=True)
        Path(str(pretrained)).touch()
    if cfg.method.get("base_learner") is not None:  # the checks read its record
        write_base_learner_record(Path(str(cfg.method.base_learner)), cfg)
    Path(str(cfg.dataset.root)).mkdir(parents=True, exist_ok=True)  # the prepared dataset's folder
    return cfg


def test_every_row_is_found() -> None:
    tables = {row.split("/", 1)[0] for row in ROWS}
    assert {"table1", "table2", "table4", "table5", "table9", "table13", "figure2", "vit"} <= tables
    assert len(ROWS) >= 80


@pytest.mark.parametrize("row", ROWS)
def test_every_row_starts_on_1_2_4_and_8_processes(row: str, tmp_path: Path) -> None:
    for devices in WORLD_SIZES:
        cfg = _launch_config(row, devices, tmp_path)
        try:
            spec = check_train_config(cfg)
        except ConfigError as err:
            pytest.fail(f"experiment={row} trainer=ddp trainer.devices={devices} is refused:\n{err}")
        total, eval_total = int(cfg.dataset.batch_size), int(cfg.dataset.eval_batch_size)
        datamodule = build_datamodule(TrainRun.from_config(cfg, spec))
        assert datamodule.batch_size * devices == total, (row, devices)
        assert datamodule.eval_batch_size == -(-eval_total // devices), (row, devices)


@pytest.mark.parametrize("devices", WORLD_SIZES)
def test_a_baseline_run_never_checks_bam_stage_1_batches(devices: int, tmp_path: Path) -> None:
    """The original refusal: table4/svf on 4 GPUs was stopped by dataset.base_stage.eval_batch_size=6."""
    cfg = _launch_config(
        "table4/svf",
        devices,
        tmp_path,
        ["dataset.base_stage.batch_size=7", "dataset.base_stage.eval_batch_size=5"],
    )
    assert check_train_config(cfg).method_name == "baseline"


@pytest.mark.parametrize("eval_total", [1, 3, 5, 6, 9])
def test_an_evaluation_batch_never_blocks_a_launch(eval_total: int, tmp_path: Path) -> None:
    cfg = _launch_config("table4/svf", 4, tmp_path, [f"dataset.eval_batch_size={eval_total}"])
    spec = check_train_config(cfg)
    datamodule = build_datamodule(TrainRun.from_config(cfg, spec))
    assert datamodule.eval_batch_size == -(-eval_total // 4)
    assert stage_batch_sizes(cfg, "meta", 4) == (2, -(-eval_total // 4))


def test_documented_refusal_the_papers_batch_of_8_on_16_gpus(tmp_path: Path) -> None:
    cfg = _launch_config("table4/svf", 16, tmp_path)
    with pytest.raises(ConfigError) as info:
        check_train_config(cfg)
    assert str(info.value).splitlines() == [
        "dataset.batch_size=8 is the total training batch over 16 processes (trainer.devices x "
        "trainer.num_nodes); it must be a positive multiple of 16: set dataset.batch_size to a multiple "
        "of 16, or run on a number of processes that divides 8"
    ]


@pytest.mark.parametrize("dataset", ["pascal", "coco"])
def test_documented_refusal_bam_stage_1_batch_of_12_on_8_gpus(dataset: str, tmp_path: Path) -> None:
    """BAM's stage 1 trains at 12 = 4 GPUs x 3; on 8 GPUs the user sets a multiple of 8 (e.g. 16)."""
    extra = ["stage=base", "method=bam", f"dataset={dataset}"]
    for devices in (1, 2, 4):
        assert isinstance(check_train_config(_launch_config(None, devices, tmp_path, extra)), RunSpec)
    with pytest.raises(ConfigError, match=r"^dataset\.base_stage\.batch_size=12 is the total training batch"):
        check_train_config(_launch_config(None, 8, tmp_path, extra))
    fixed = _launch_config(None, 8, tmp_path, [*extra, "dataset.base_stage.batch_size=16"])
    check_train_config(fixed)
    assert stage_batch_sizes(fixed, "base", 8) == (2, -(-int(fixed.dataset.base_stage.eval_batch_size) // 8))
