"""Explicit float32 precision (TF32 off unless asked) and a deterministic mode that works on CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import svfseg.tasks.train as train_task
from svfseg.config_checks import ConfigError, check_train_config
from svfseg.precision import apply_matmul_precision
from tests.helpers.hydra import compose_config


def _cfg(tmp_path: Path, extra: list[str]):
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


def test_matmul_precision_sets_matmuls_and_cudnn_together() -> None:
    before = apply_matmul_precision("high")
    try:
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32 is True
        apply_matmul_precision(
            "highest"
        )  # the paper's fp32: TF32 off for convs too (PyTorch's default is on)
        assert torch.get_float32_matmul_precision() == "highest" and torch.backends.cudnn.allow_tf32 is False
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            ["matmul_precision=fast"],
            r"^matmul_precision='fast' is invalid: choose one of \['highest', 'high', 'medium'\]",
        ),
        (
            ["trainer.accelerator=gpu", "trainer.deterministic=true"],
            r"^trainer\.deterministic=true fails on CUDA .* Use trainer\.deterministic=warn",
        ),
    ],
)
def test_bad_precision_settings_are_refused_at_start(
    tmp_path: Path, overrides: list[str], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        check_train_config(_cfg(tmp_path, overrides))


def test_train_applies_the_configured_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as gpu:  # as on a GPU machine: the accelerator check passes
        gpu.setattr(torch.cuda, "is_available", lambda: True)
        check_train_config(_cfg(tmp_path, ["trainer.accelerator=gpu", "trainer.deterministic=warn"]))
    seen: list[str] = []

    class Stop(Exception):
        pass

    def record(value: str) -> None:
        seen.append(value)
        raise Stop

    monkeypatch.setattr(train_task, "apply_matmul_precision", record)
    with pytest.raises(Stop):
        train_task.train(_cfg(tmp_path, ["matmul_precision=high"]))
    assert seen == ["high"]
