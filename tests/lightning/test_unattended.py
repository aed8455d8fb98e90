"""Runs nobody watches: per-epoch log lines, every logger choice, run directories that never collide."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import tomllib
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from svfseg.config_checks import ConfigError, check_train_config
from svfseg.lightning.progress import LineProgress, SparseMetricsProgressBar, build_progress_bar
from svfseg.tasks.train import train
from tests.helpers.cli import REPO, run_cli, tiny_overrides
from tests.helpers.hydra import compose_config, tiny_train_config


def test_a_redirected_two_epoch_run_logs_one_line_per_epoch_and_the_test_metrics(
    synthetic_pascal: Any, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    # the default progress bar stays: with stdout redirected it becomes log lines
    overrides = [
        o
        for o in tiny_overrides(synthetic_pascal)
        if not o.startswith(("trainer.max_epochs", "~callbacks.progress_bar"))
    ]
    proc = run_cli(["train.py", *overrides, "trainer.max_epochs=2", f"hydra.run.dir={out}"], REPO)
    log_file = (out / "train.log").read_text()
    for text in (log_file, proc.stdout + proc.stderr):  # the log file and the redirected console
        lines = re.findall(
            r"epoch (\d)/2: train loss (\d+\.\d{4}), val mIoU (\d+\.\d\d), FB-IoU (\d+\.\d\d) \(4 steps", text
        )
        assert [n for n, *_ in lines] == ["1", "2"], text[-2000:]
        progress = re.findall(
            r"train epoch (\d)/2: 4/4 batches \(100%\), train/loss \d+\.\d{4}, \d+\.\d\d s/batch", text
        )
        assert progress == ["1", "2"], text[-2000:]
        test = re.search(
            r"test \(best\.ckpt, 12 episodes of seed 321\): mIoU (\d+\.\d\d), FB-IoU (\d+\.\d\d)", text
        )
        assert test is not None, text[-2000:]
    record = json.loads((out / "metrics.json").read_text())
    assert test.group(1) == f"{100 * record['miou']:.2f}" and test.group(2) == f"{100 * record['fbiou']:.2f}"


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "none"])
def test_every_logger_choice_trains(synthetic_pascal: Any, tmp_path: Path, logger: str) -> None:
    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(
        root, tmp_path, min_pixels=min_pixels, extra=[f"logger={logger}", "trainer.max_epochs=1"]
    )
    result = train(cfg)
    assert result["n_episodes"] == 12
    written = {"csv": tmp_path / "csv" / "metrics.csv", "tensorboard": tmp_path / "tensorboard"}
    if logger in written:
        assert written[logger].exists()
        if logger == "tensorboard":
            assert list(written[logger].rglob("events.out.tfevents.*"))


def test_a_missing_tensorboard_package_is_reported_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if "tensorboard" in name.lower() else real(name, *a),
    )
    cfg = compose_config(
        "train", ["dataset=synthetic", "debug=tiny", "logger=tensorboard", f"paths.output_dir={tmp_path}"]
    )
    with pytest.raises(
        ConfigError,
        match=r"logger=tensorboard needs the tensorboard package.*pip install -e '\.\[tensorboard\]'",
    ):
        check_train_config(cfg)


def test_a_gpu_trainer_without_cuda_names_the_cpu_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_config("train", ["dataset=synthetic", "trainer=ddp", f"paths.output_dir={tmp_path}"])
    with pytest.raises(
        ConfigError,
        match=r"trainer\.accelerator=gpu but no CUDA device is visible.*trainer\.accelerator=cpu trainer\.strategy=ddp",
    ):
        check_train_config(cfg)


def test_debug_presets_get_their_own_run_directory_and_base_learner_file() -> None:
    args = ["train.py", "dataset=synthetic", "method=bam"]
    real = run_cli([*args, "--cfg", "all", "--resolve"], REPO).stdout
    tiny = run_cli([*args, "debug=tiny", "--cfg", "all", "--resolve"], REPO).stdout
    assert re.search(r"fold0-1shot-seed321-[0-9a-f]{8}\n", real)
    assert re.search(r"fold0-1shot-seed321-[0-9a-f]{8}-tiny\n", tiny)
    assert "base_learner/synthetic/fold0/resnet50/pspnet.pt" in real
    assert "base_learner/synthetic/fold0/resnet50-tiny/pspnet.pt" in tiny
    stage1 = run_cli([*args, "stage=base", "--cfg", "all", "--resolve"], REPO).stdout
    assert re.search(r"bam-resnet50-svf/fold0-1shot-seed321-[0-9a-f]{8}-stage1\n", stage1)  # its own folder


def test_a_submitit_local_sweep_runs_each_job_and_writes_its_metrics(
    synthetic_pascal: Any, tmp_path: Path
) -> None:
    root, min_pixels = synthetic_pascal
    sweep = tmp_path / "sweep"
    run_cli(
        [
            "train.py",
            "-m",
            "hydra/launcher=submitit_local",
            "dataset=synthetic",
            "debug=tiny",
            f"dataset.root={root}",
            f"dataset.min_pixels={min_pixels}",
            "fold=0,1",
            f"hydra.sweep.dir={sweep}",
            f"paths.log_dir={tmp_path}",
        ],
        REPO,
        timeout=300,
    )
    records = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    names = sorted(records)
    assert len(names) == 2
    assert re.fullmatch(r"0-baseline-resnet50-svf-fold0-1shot-[0-9a-f]{8}-tiny", names[0]), names
    assert re.fullmatch(r"1-baseline-resnet50-svf-fold1-1shot-[0-9a-f]{8}-tiny", names[1]), names
    assert [r["fold"] for _, r in sorted(records.items())] == [0, 1]


def _tiny_sweep(synthetic_pascal: Any, tmp_path: Path, sweep: str) -> list[str]:
    """``train.py -m SWEEP`` on the tiny synthetic profile, its jobs under ``tmp_path/sweep``."""
    root, min_pixels = synthetic_pascal
    return [
        "train.py",
        "-m",
        "dataset=synthetic",
        "debug=tiny",
        f"dataset.root={root}",
        f"dataset.min_pixels={min_pixels}",
        "~callbacks.progress_bar",
        sweep,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"paths.log_dir={tmp_path}",
    ]


@pytest.mark.slow
def test_a_sweep_launched_again_with_auto_skips_finished_jobs_and_completes_the_others(
    synthetic_pascal: Any, tmp_path: Path
) -> None:
    """The second launch of a sweep that stopped in its second job (its test metrics never written)."""
    sweep = tmp_path / "sweep"
    command = _tiny_sweep(synthetic_pascal, tmp_path, "fold=0,1")
    run_cli(command, REPO, timeout=300)
    first, second = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    finished = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    record = json.loads((second / "metrics.json").read_text())
    (second / "metrics.json").unlink()  # the second job stopped after its last checkpoint
    proc = run_cli([*command, "ckpt_path=auto"], REPO, timeout=300)
    assert proc.stdout.count("already finished:") == 1 and f"already finished: {first}" in proc.stdout
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == finished
    again = json.loads((second / "metrics.json").read_text())
    assert (again["miou"], again["fbiou"], again["class_iou"]) == (
        record["miou"],
        record["fbiou"],
        record["class_iou"],
    )


@pytest.mark.slow
def test_a_job_refused_at_start_does_not_end_the_sweep(synthetic_pascal: Any, tmp_path: Path) -> None:
    """train.py's one-line refusal exited the process, which ended a Hydra multirun at that job: the jobs
    after it never ran. Now the sweep goes on, and Hydra names the refused job when it ends (status 1)."""
    sweep = tmp_path / "sweep"
    proc = run_cli(_tiny_sweep(synthetic_pascal, tmp_path, "fold=4,0"), REPO, timeout=300, ok=False)
    assert proc.returncode == 1
    assert "train.py: 1 problem in the config, nothing was run:\n  - fold=4 is invalid" in proc.stderr
    assert "Error executing job with overrides:" in proc.stderr and "'fold=4'" in proc.stderr
    (record,) = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert record["fold"] == 0  # the job after the refused one ran


def test_the_slurm_preset_runs_one_task_per_gpu() -> None:
    out = run_cli(["train.py", "hydra/launcher=slurm_4gpu", "trainer=ddp", "--cfg", "hydra"], REPO).stdout
    launcher = out[out.index("launcher:") :]
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in launcher
    # max_num_timeout: a job past its time limit is requeued (submitit's default, 0, ends it), and resumes
    for line in (
        "gpus_per_node: 4",
        "tasks_per_node: 4",
        "nodes: 1",
        "timeout_min: 1440",
        "max_num_timeout: 3",
    ):
        assert line in launcher, line


def test_pre_flight_reports_every_problem_at_once_without_a_traceback(tmp_path: Path) -> None:
    proc = run_cli(
        [
            "train.py",
            "dataset=synthetic",
            "shot=0",
            "matmul_precision=fast",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "dataset.batch_size=3",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        REPO,
        ok=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("  - ")]
    assert proc.stderr.splitlines()[0] == f"train.py: {len(lines)} problems in the config, nothing was run:"
    for expected in (
        "shot=0 is invalid",
        "dataset.batch_size=3 is the total training batch over 2 processes",
        "matmul_precision='fast'",
    ):
        assert sum(expected in line for line in lines) == 1, (expected, lines)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_progress_bar_is_rich_on_a_terminal_and_lines_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert isinstance(build_progress_bar(5), SparseMetricsProgressBar)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    bar = build_progress_bar(5)
    assert isinstance(bar, LineProgress) and bar.every_n_steps == 5
    assert isinstance(build_progress_bar(5, force="rich"), SparseMetricsProgressBar)
    with pytest.raises(ValueError, match=r"progress_bar\.force='x' is invalid"):
        build_progress_bar(5, force="x")


def test_under_slurm_lightning_takes_the_tasks_as_ranks_instead_of_relaunching(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the slurm_4gpu preset relies on, as far as a CPU machine can show it: with the environment srun
    gives each of 2 tasks, Lightning's DDP picks the SLURM cluster environment (rank = task id), so no
    process is launched by Lightning itself."""
    env = {
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NAME": "train",
        "SLURM_JOB_ID": "123",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "node1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # the Trainer sets the process-wide rank-zero flags to this "rank 1": restore them afterwards, or every
    # later run of this test process would skip its rank-zero-only work (CSV logs)
    for flag in (rank_zero_only, utils_rank_zero_only):
        monkeypatch.setattr(flag, "rank", flag.rank)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False
    )
    cluster = trainer.strategy.cluster_environment
    assert isinstance(cluster, SLURMEnvironment) and cluster.creates_processes_externally is not False
    assert (cluster.world_size(), cluster.global_rank(), cluster.local_rank()) == (2, 1, 1)
    monkeypatch.undo()
    assert rank_zero_only.rank == 0 and utils_rank_zero_only.rank == 0


# ----------------------------------------------------------------------------------------- packaging
def test_the_notebook_default_checkpoint_is_where_the_default_train_run_writes_it() -> None:
    notebook = json.loads((REPO / "notebooks" / "svf_analysis.ipynb").read_text())
    source = "".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code")
    default = re.search(r'DEFAULT_CKPT = "([^"]+)"', source).group(1)
    resolved = run_cli(["train.py", "--cfg", "all", "--resolve"], REPO).stdout
    run_dir = re.search(r"^\s+dir: \./(outputs/train/\S+)$", resolved, re.M).group(1)
    assert fnmatch.fnmatchcase(f"{run_dir}/checkpoints/best.ckpt", default), (default, run_dir)
    assert re.fullmatch(r".*/fold0-1shot-seed321-[0-9a-f]{8}", run_dir)


def test_packaging_extras_license_and_ignored_folders() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"  # an SPDX expression: no setuptools deprecation warning
    extras = project["optional-dependencies"]
    assert any(d.startswith("jupyterlab") for d in extras["notebook"])
    assert any(d.startswith("hydra-submitit-launcher") for d in extras["slurm"])
    assert any(d.startswith("tensorboard") for d in extras["tensorboard"])
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert {"initmodel/", "results/", "outputs/"} <= set(ignored)


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-") for r in requirements}


def test_each_extra_installs_what_its_name_says() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert _requirement_names(extras["tensorboard"]) == {"tensorboard"}  # logger=tensorboard
    assert _requirement_names(extras["slurm"]) == {"hydra-submitit-launcher"}  # hydra/launcher=slurm_4gpu
    assert _requirement_names(extras["notebook"]) == {"jupyterlab", "ipykernel"}
    # dev (make install, CI) runs every test: the optional loggers and launchers included
    assert {"tensorboard", "hydra-submitit-launcher", "pytest"} <= _requirement_names(extras["dev"])


def test_make_lint_covers_every_python_file_at_the_repository_root() -> None:
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    lint = subprocess.run(["make", "-n", "-C", str(REPO), "lint", "format"], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stderr
    ruff_lines = [line.split() for line in lint.stdout.splitlines() if "ruff" in line]
    assert len(ruff_lines) == 4, lint.stdout
    root_scripts = {p.name for p in REPO.glob("*.py")}
    assert {"train.py", "eval.py", "predict.py"} <= root_scripts
    for words in ruff_lines:
        assert root_scripts <= set(words) and {"src", "tests", "benchmarks"} <= set(words), words
