"""Runs nobody watches: per-epoch log lines, every logger choice, run directories that never collide."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from svfseg.config_checks import ConfigError, check_train_config
from svfseg.tasks.train import train
from tests.cli_helpers import REPO, run_cli, tiny_overrides
from tests.hydra_helpers import compose_config, tiny_train_config


def test_a_redirected_two_epoch_run_logs_one_line_per_epoch_and_the_test_metrics(
    synthetic_pascal: Any, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    overrides = [o for o in tiny_overrides(synthetic_pascal) if not o.startswith("trainer.max_epochs")]
    proc = run_cli(["train.py", *overrides, "trainer.max_epochs=2", f"hydra.run.dir={out}"], REPO)
    log_file = (out / "train.log").read_text()
    for text in (log_file, proc.stdout + proc.stderr):  # the log file and the redirected console
        lines = re.findall(
            r"epoch (\d)/2: train loss (\d+\.\d{4}), val mIoU (\d+\.\d\d), FB-IoU (\d+\.\d\d) \(4 steps", text
        )
        assert [n for n, *_ in lines] == ["1", "2"], text[-2000:]
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
    assert "fold0-1shot-seed321\n" in real and "fold0-1shot-seed321-tiny\n" in tiny
    assert "base_learner/synthetic/fold0/resnet50/pspnet.pt" in real
    assert "base_learner/synthetic/fold0/resnet50-tiny/pspnet.pt" in tiny
