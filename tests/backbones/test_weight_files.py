"""One reader for every backbone family's weight file: safetensors, torch zip and legacy files, wrapped or not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from svfseg.backbones.weights import BackboneWeightsError, read_state_dict
from svfseg.files import is_safetensors

STATE = {"conv.weight": torch.arange(12.0).reshape(3, 4), "bn.running_mean": torch.tensor([1.0, 2.0, 3.0])}


def _write(path: Path, how: str) -> Path:
    """Write ``STATE`` the way another project's code writes its weight files."""
    if how == "safetensors":  # timm / Hugging Face hub files
        save_file(STATE, str(path))
    elif how == "zip":  # torch.save of a state dict
        torch.save(STATE, path)
    elif how == "legacy":  # torch.save before PyTorch 1.6
        torch.save(STATE, path, _use_new_zipfile_serialization=False)
    elif how == "model":  # timm's train script (checkpoint["model"]) ...
        torch.save({"model": STATE, "epoch": 3}, path)
    elif how == "state_dict":  # ... and PSPNet/BAM-style checkpoints
        torch.save({"state_dict": STATE, "optimizer": {}}, path)
    elif how == "ddp":  # a DistributedDataParallel model's state dict
        torch.save({f"module.{k}": v for k, v in STATE.items()}, path)
    return path


@pytest.mark.parametrize("how", ["safetensors", "zip", "legacy", "model", "state_dict", "ddp"])
def test_every_layout_reads_the_same_tensors(tmp_path: Path, how: str) -> None:
    path = _write(tmp_path / f"w-{how}.bin", how)  # the suffix says nothing: the content decides
    assert is_safetensors(path) == (how == "safetensors")
    state = read_state_dict(path)
    assert sorted(state) == sorted(STATE)
    for key, value in STATE.items():
        assert torch.equal(state[key], value)


def test_a_truncated_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.safetensors", "safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(
        BackboneWeightsError,
        match=r"cut\.safetensors does not read as backbone weights \(truncated or corrupt:.*fetch NAME",
    ):
        read_state_dict(cut)


def test_a_missing_file_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.pth does not exist.*svfseg\.weights"):
        read_state_dict(tmp_path / "nothere.pth", "resnet50")
