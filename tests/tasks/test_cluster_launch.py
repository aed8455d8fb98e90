"""The process layout a trainer asks for is checked against how the job was launched, at start.

Each environment below is what the launcher itself sets: SLURM's job step variables (``srun`` / sbatch
with ``--nodes`` and ``--ntasks-per-node``), torchrun's (``TORCHELASTIC_RUN_ID``, ``WORLD_SIZE``), and the
manual multi-machine launch Lightning documents (``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from svfseg.config_checks import ConfigError, check_cluster_launch, check_train_config
from tests.helpers.cli import LAUNCH_VARIABLES, REPO, run_cli
from tests.helpers.hydra import compose_config


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in LAUNCH_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _trainer(devices: object, nodes: int) -> object:
    return OmegaConf.create({"accelerator": "cpu", "strategy": "ddp", "devices": devices, "num_nodes": nodes})


def test_several_machines_without_a_launcher_are_refused_at_start(no_launcher, tmp_path: Path) -> None:
    """``trainer.num_nodes=2`` typed on one machine used to wait for the second machine until the process
    group's 30-minute timeout, after the model was built and the run folder claimed."""
    cfg = compose_config(
        "train",
        [
            "dataset=synthetic",
            "debug=tiny",
            f"paths.output_dir={tmp_path}",
            f"dataset.root={tmp_path}",
            "trainer.num_nodes=2",
            "dataset.batch_size=2",
        ],
    )
    with pytest.raises(ConfigError) as info:
        check_train_config(cfg)
    assert str(info.value).splitlines() == [
        "trainer.num_nodes=2 asks for 2 machines, but no launcher started this process on several (no SLURM "
        "job step, torchrun, LSF or MPI environment, and NODE_RANK is not set): every rank would wait for the "
        "other machines until the 30-minute timeout. Launch it on a cluster (e.g. -m "
        "hydra/launcher=slurm_4gpu hydra.launcher.nodes=2), with torchrun --nnodes=2, or on each machine "
        "with MASTER_ADDR, MASTER_PORT and NODE_RANK set; on one machine, leave trainer.num_nodes=1"
    ]


def test_a_manual_launch_with_a_node_rank_passes(no_launcher) -> None:
    no_launcher.setenv("MASTER_ADDR", "10.0.0.1")
    no_launcher.setenv("MASTER_PORT", "29500")
    no_launcher.setenv("NODE_RANK", "1")
    check_cluster_launch(_trainer(2, 2))
    check_cluster_launch(_trainer(1, 1))


def _slurm(monkeypatch: pytest.MonkeyPatch, nodes: int, per_node: int) -> None:
    """What ``sbatch --nodes=N --ntasks-per-node=T`` (submitit's launcher) sets in each task."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_NNODES", str(nodes))
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", str(per_node))
    monkeypatch.setenv("SLURM_NTASKS", str(nodes * per_node))


@pytest.mark.parametrize(
    ("devices", "nodes", "shown"),
    [
        (
            4,
            1,
            r"trainer\.devices=4 and trainer\.num_nodes=1 do not match the processes this job was started "
            r"with \(SLURMEnvironment\): .*`--nodes=2` does not match\. HINT: Set `num_nodes=2`",
        ),
        (
            2,
            2,
            r"trainer\.devices=2 and trainer\.num_nodes=2 do not match .*`--ntasks-per-node=4` does not "
            r"match\. HINT: Set `devices=4`",
        ),
    ],
)
def test_a_slurm_job_of_other_nodes_or_tasks_is_refused(no_launcher, devices, nodes, shown) -> None:
    _slurm(no_launcher, nodes=2, per_node=4)
    with pytest.raises(ConfigError, match=shown):
        check_cluster_launch(_trainer(devices, nodes))
    check_cluster_launch(_trainer(4, 2))  # the job's own layout
    check_cluster_launch(_trainer("auto", 2))  # counted by Lightning when it starts


def test_a_torchrun_world_of_another_size_is_refused(no_launcher) -> None:
    """``torchrun --nnodes=2 --nproc-per-node=2``: 4 processes in all."""
    for var, value in {
        "TORCHELASTIC_RUN_ID": "x",
        "WORLD_SIZE": "4",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }.items():
        no_launcher.setenv(var, value)
    with pytest.raises(ConfigError, match=r"\(4\) does not match|does not match the world size \(4\)"):
        check_cluster_launch(_trainer(2, 1))
    check_cluster_launch(_trainer(2, 2))


def test_a_cluster_environment_of_ones_own_is_left_to_lightning(no_launcher) -> None:
    trainer = _trainer(2, 2)
    trainer.plugins = [{"_target_": "lightning_fabric.plugins.environments.LightningEnvironment"}]
    check_cluster_launch(trainer)


def test_train_py_with_two_machines_on_one_exits_at_once_and_writes_nothing(
    no_launcher, tmp_path: Path
) -> None:
    start = time.monotonic()
    proc = run_cli(
        [
            str(REPO / "train.py"),
            "dataset=synthetic",
            "debug=tiny",
            f"dataset.root={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "trainer.num_nodes=2",
        ],
        tmp_path,
        ok=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "trainer.num_nodes=2 asks for 2 machines" in proc.stderr
    assert not (tmp_path / "run").exists()
    assert time.monotonic() - start < 120
