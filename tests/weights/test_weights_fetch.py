"""python -m svfseg.weights fetch / list, offline: a loopback HTTP server and a pre-filled hub cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from svfseg.backbones import build_backbone
from svfseg.backbones.vgg import VGG_SLICES
from svfseg.backbones.vit import create_timm_vit
from svfseg.weights.fetch import WeightsFetchError, fetch, record_path, status
from svfseg.weights.sources import source

REPO = Path(__file__).resolve().parents[2]
WIDTH = 0.125
# Our deep-stem names -> timm's resnet*s names, written out independently of the converter under test.
TIMM_NAMES = {
    "conv1": "conv1.0",
    "bn1": "conv1.1",
    "conv2": "conv1.3",
    "bn2": "conv1.4",
    "conv3": "conv1.6",
    "bn3": "bn1",
}


def torchvision_vgg_state(width: float) -> dict[str, torch.Tensor]:
    """A VGG-16-bn state dict in torchvision's ``features.N`` layout (what download.pytorch.org serves)."""
    torch.manual_seed(0)
    out = {}
    for key, value in build_backbone("vgg16_bn", width_mult=width, warn_if_random=False).state_dict().items():
        stage, index, rest = key.split(".", 2)
        out[f"features.{VGG_SLICES[stage][0] + int(index)}.{rest}"] = value.clone()
    return out


def _serve(root: Path, name: str, data: bytes) -> str:
    (root / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _bytes(state: dict[str, torch.Tensor], path: Path) -> bytes:
    torch.save(state, path)
    return path.read_bytes()


def test_url_download_is_checked_converted_and_recorded(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, root = server
    state = torchvision_vgg_state(WIDTH)
    digest = _serve(root, "vgg16_bn.pth", _bytes(state, tmp_path / "src.pth"))
    spec = replace(source("vgg16_bn"), sha256_prefix=digest[:8])
    path, downloaded = fetch(spec, tmp_path / "w", url=f"{base}/vgg16_bn.pth", width_mult=WIDTH)
    assert downloaded and path == tmp_path / "w" / "vgg16_bn.pth"
    loaded = torch.load(path, weights_only=True)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    record = json.loads(record_path(path).read_text())
    assert (
        record["origin"] == f"{base}/vgg16_bn.pth"
        and record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    )
    assert record["sha256"] == digest  # the publisher's bytes, kept as downloaded (no re-save)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["vgg16_bn.pth", "vgg16_bn.pth.json"]
    assert fetch(spec, tmp_path / "w", url="http://127.0.0.1:1/unused", width_mult=WIDTH) == (path, False)
    rows = {r["name"]: r for r in status(tmp_path / "w")}
    assert rows["vgg16_bn"]["present"] == "yes" and rows["resnet50_v2"]["present"] == "no"


@pytest.mark.parametrize(
    "case", ["checksum_mismatch", "truncated", "file_of_another_backbone", "unreachable"]
)
def test_bad_downloads_leave_nothing_behind(tmp_path: Path, server: tuple[str, Path], case: str) -> None:
    base, root = server
    data = _bytes(torchvision_vgg_state(WIDTH), tmp_path / "src.pth")
    spec = source("vgg16_bn")
    url = f"{base}/vgg16_bn.pth"
    if case == "checksum_mismatch":
        _serve(root, "vgg16_bn.pth", data)
        spec, match = (
            replace(spec, sha256_prefix="00000000"),
            r"did not match its recorded sha256 prefix '00000000'",
        )
    elif case == "truncated":
        digest = _serve(root, "vgg16_bn.pth", data[: len(data) // 2])
        spec, match = (
            replace(spec, sha256_prefix=digest[:8]),
            r"does not read as a PyTorch checkpoint \(downloaded from http.*nothing was written",
        )
    elif case == "file_of_another_backbone":
        torch.manual_seed(0)
        other = build_backbone("resnet50", width_mult=WIDTH, warn_if_random=False).state_dict()
        digest = _serve(root, "vgg16_bn.pth", _bytes(dict(other), tmp_path / "r50.pth"))
        spec, match = replace(spec, sha256_prefix=digest[:8]), r"do not fit backbone=vgg16_bn"
    else:
        url, match = "http://127.0.0.1:9/vgg16_bn.pth", r"download of http://127.0.0.1:9/vgg16_bn.pth failed"
    with pytest.raises(WeightsFetchError, match=match):
        fetch(spec, tmp_path / "w", url=url, width_mult=WIDTH)
    assert not (tmp_path / "w").exists() or list((tmp_path / "w").iterdir()) == []


def test_manual_sources_say_where_to_get_the_file(tmp_path: Path) -> None:
    with pytest.raises(
        WeightsFetchError, match=r"resnet50_v2 cannot be downloaded by a program: .*PFENet or BAM README"
    ):
        fetch(source("resnet50_v2"), tmp_path)


def _fill_hub_cache(cache: Path, repo_id: str, state: dict[str, torch.Tensor]) -> None:

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))


def test_hub_weights_in_offline_mode_are_converted_to_the_pspnet_layout(tmp_path: Path) -> None:
    torch.manual_seed(3)
    ours = build_backbone("resnet50", warn_if_random=False).state_dict()  # full width: what the CLI builds
    timm = {}
    for key, value in ours.items():
        name = key.removeprefix("layer0.")
        head, _, rest = name.partition(".")
        timm[f"{TIMM_NAMES.get(head, head)}.{rest}"] = value
    timm["fc.weight"], timm["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "svfseg.weights", "fetch", "resnet50s_gluon", "--dir", str(tmp_path / "w")]
    empty = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert (
        empty.returncode == 2 and "could not get timm/resnet50s.gluon_in1k/model.safetensors" in empty.stderr
    )
    assert not (tmp_path / "w" / "resnet50s_gluon_in1k.pth").exists()
    _fill_hub_cache(tmp_path / "hub", "timm/resnet50s.gluon_in1k", timm)
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "w" / "resnet50s_gluon_in1k.pth"
    loaded = build_backbone("resnet50", pretrained=str(path)).state_dict()
    assert all(torch.equal(loaded[k], ours[k]) for k in ours if not k.endswith("num_batches_tracked"))
    assert json.loads(record_path(path).read_text())["origin"].startswith(
        "hf://timm/resnet50s.gluon_in1k@main/"
    )


def test_vit_weights_from_an_offline_hub_cache_are_kept_in_timm_format(tmp_path: Path) -> None:
    torch.manual_seed(4)
    timm_state = create_timm_vit("dinov2_vits14").state_dict()  # full size: what the CLI checks against
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1"}
    _fill_hub_cache(tmp_path / "hub", "timm/vit_small_patch14_dinov2.lvd142m", timm_state)
    cmd = [sys.executable, "-m", "svfseg.weights", "fetch", "dinov2_vits14", "--dir", str(tmp_path / "w")]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "w" / "dinov2_vits14.safetensors"
    assert load_file(str(path)).keys() == timm_state.keys()
    bb = build_backbone("dinov2_vits14", pretrained=str(path))
    assert torch.equal(bb.layer4.blocks[-1].mlp.fc2.weight, timm_state["blocks.11.mlp.fc2.weight"])
    assert json.loads(record_path(path).read_text())["origin"].startswith(
        "hf://timm/vit_small_patch14_dinov2.lvd142m@main/"
    )
