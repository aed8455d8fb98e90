"""Backbones: exact layouts (counts, dilation, shapes), equivalence with torchvision, strict weight loading."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers as make_vgg_layers

from svfseg.backbones import (
    STAGE_NAMES,
    Backbone,
    BackboneWeightsError,
    build_backbone,
    load_backbone_weights,
)
from svfseg.backbones.vgg import VGG_SLICES

SMALL = 0.125


def meta_backbone(name: str, **kwargs) -> Backbone:
    """Full-width backbone without memory: shapes and counts only."""
    with torch.device("meta"):
        return build_backbone(name, **kwargs)


def conv_weight_count(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_shapes(backbone: Backbone, size: int) -> dict[str, tuple[int, ...]]:
    out = backbone.eval()(torch.empty(1, 3, size, size, device="meta"))
    return {k: tuple(v.shape) for k, v in out.items()}


def conv_layout(module: nn.Module) -> dict[str, tuple]:
    return {
        n: (m.kernel_size, m.stride, m.padding, m.dilation)
        for n, m in module.named_modules()
        if isinstance(m, nn.Conv2d)
    }


# ---------------------------------------------------------------------------------------------- layout
@pytest.fixture(scope="module")
def r50() -> Backbone:
    return meta_backbone("resnet50")


def test_resnet50_deep_stem_conv_weights_per_stage(r50: Backbone) -> None:
    expected = {
        "layer0": 112_320,
        "layer1": 233_472,
        "layer2": 1_212_416,
        "layer3": 7_077_888,
        "layer4": 14_942_208,
    }
    assert {s: conv_weight_count(r50.stage(s)) for s in STAGE_NAMES} == expected
    assert conv_weight_count(r50) == 23_578_304
    assert sum(isinstance(m, nn.Conv2d) for m in r50.modules()) == 55


def test_deep_stem_structure(r50: Backbone) -> None:
    stem = r50.layer0
    assert [n for n, _ in stem.named_children()] == [
        "conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3", "relu3", "maxpool"
    ]  # fmt: skip
    assert [(c.in_channels, c.out_channels, c.stride) for c in (stem.conv1, stem.conv2, stem.conv3)] == [
        (3, 64, (2, 2)),
        (64, 64, (1, 1)),
        (64, 128, (1, 1)),
    ]
    assert (stem.maxpool.kernel_size, stem.maxpool.stride, stem.maxpool.padding) == (3, 2, 1)
    ds = r50.layer1[0].downsample[0]
    assert (ds.in_channels, ds.out_channels, ds.kernel_size) == (128, 256, (1, 1))
    assert r50.channels == {"layer0": 128, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    assert r50.stage_names == STAGE_NAMES
    assert [len(r50.stage(s)) for s in STAGE_NAMES[1:]] == [3, 4, 6, 3]


def test_resnet101_blocks_and_channels() -> None:
    r101 = meta_backbone("resnet101")
    assert [len(r101.stage(s)) for s in STAGE_NAMES[1:]] == [3, 4, 23, 3]
    assert r101.channels["layer4"] == 2048 and r101.channels["layer0"] == 128
    assert meta_shapes(r101, 473)["layer4"] == (1, 2048, 60, 60)


def test_resnet50_tv_matches_torchvision_layout_and_count() -> None:
    ours = meta_backbone("resnet50_tv", dilation="torchvision")
    with torch.device("meta"):
        tv = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    tv_state = {k: v.shape for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    our_state = {k.removeprefix("layer0."): v.shape for k, v in ours.state_dict().items()}
    assert our_state == tv_state
    assert n_params(ours) == 23_508_032 == sum(p.numel() for n, p in tv.named_parameters() if n[:3] != "fc.")
    tv_layout = conv_layout(tv)
    assert {k.removeprefix("layer0."): v for k, v in conv_layout(ours).items()} == tv_layout


def test_uniform_dilation_every_conv(r50: Backbone) -> None:
    for stage, dil in (("layer3", 2), ("layer4", 4)):
        for i, block in enumerate(r50.stage(stage)):
            assert (block.conv2.dilation, block.conv2.padding, block.conv2.stride) == ((dil, dil),) * 2 + (
                (1, 1),
            ), f"{stage}.{i}"
            assert block.conv1.dilation == block.conv3.dilation == (1, 1)
            assert block.conv1.stride == block.conv3.stride == (1, 1)
        assert r50.stage(stage)[0].downsample[0].stride == (1, 1)
    assert r50.layer2[0].conv2.stride == (2, 2) and r50.layer2[0].downsample[0].stride == (2, 2)
    assert all(b.conv2.dilation == (1, 1) for s in ("layer1", "layer2") for b in r50.stage(s))


def test_torchvision_dilation_every_conv() -> None:
    net = meta_backbone("resnet50", dilation="torchvision")
    got = {
        stage: [(b.conv2.dilation[0], b.conv2.padding[0], b.conv2.stride[0]) for b in net.stage(stage)]
        for stage in ("layer3", "layer4")
    }
    assert got == {
        "layer3": [(1, 1, 1)] + [(2, 2, 1)] * 5,
        "layer4": [(2, 2, 1), (4, 4, 1), (4, 4, 1)],
    }
    assert net.layer3[0].downsample[0].stride == net.layer4[0].downsample[0].stride == (1, 1)


@pytest.mark.parametrize(
    ("name", "dilation", "layer0"),
    [
        ("resnet50", "uniform", 128),
        ("resnet50", "torchvision", 128),
        ("resnet50_tv", "uniform", 64),
        ("resnet50_tv", "torchvision", 64),
    ],
)
def test_resnet_473_gives_60(name: str, dilation: str, layer0: int) -> None:
    shapes = meta_shapes(meta_backbone(name, dilation=dilation), 473)
    assert shapes == {
        "layer0": (1, layer0, 119, 119),
        "layer1": (1, 256, 119, 119),
        "layer2": (1, 512, 60, 60),
        "layer3": (1, 1024, 60, 60),
        "layer4": (1, 2048, 60, 60),
    }
    assert meta_shapes(meta_backbone(name, dilation=dilation), 641)["layer4"] == (1, 2048, 81, 81)


def test_vgg16_bn_layout_and_473_sizes() -> None:
    vgg = meta_backbone("vgg16_bn")
    assert [len(vgg.stage(s)) for s in STAGE_NAMES] == [b - a for a, b in VGG_SLICES.values()]
    pools = [m for m in vgg.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4 and all(p.ceil_mode and p.kernel_size == 2 and p.stride == 2 for p in pools)
    assert meta_shapes(vgg, 473) == {
        "layer0": (1, 64, 237, 237),
        "layer1": (1, 128, 119, 119),
        "layer2": (1, 256, 60, 60),
        "layer3": (1, 512, 30, 30),
        "layer4": (1, 512, 30, 30),
    }
    assert vgg.channels == {"layer0": 64, "layer1": 128, "layer2": 256, "layer3": 512, "layer4": 512}
    with torch.device("meta"):
        tv = torchvision.models.vgg16_bn()
    assert n_params(vgg) == n_params(tv.features) == 14_723_136
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 13


def test_small_width_real_forward() -> None:
    net = build_backbone("resnet50", width_mult=SMALL).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 65, 65))
    assert list(out) == list(STAGE_NAMES)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "layer0": (1, 16, 17, 17),
        "layer1": (1, 32, 17, 17),
        "layer2": (1, 64, 9, 9),
        "layer3": (1, 128, 9, 9),
        "layer4": (1, 256, 9, 9),
    }
    assert net.channels == {k: v.shape[1] for k, v in out.items()}
    vgg = build_backbone("vgg16_bn", width_mult=SMALL).eval()
    with torch.no_grad():
        sizes = [v.shape[-1] for v in vgg(torch.randn(1, 3, 65, 65)).values()]
    assert sizes == [33, 17, 9, 5, 5]


def _tv_resnet_features(tv: nn.Module, x: Tensor) -> Tensor:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    return tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))


def test_torchvision_weights_give_identical_features(tmp_path: Path) -> None:
    tv = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    path = tmp_path / "resnet50_tv.pth"
    torch.save(tv.state_dict(), path)
    ours = build_backbone("resnet50_tv", pretrained=path, dilation="torchvision").eval()
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        assert torch.equal(ours(x)["layer4"], _tv_resnet_features(tv, x))

    # torchvision's vgg16_bn features (the 100M-parameter classifier is not needed to test the mapping)
    features = make_vgg_layers(vgg_cfgs["D"], batch_norm=True).eval()
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg16_bn.pth")
    vgg = build_backbone("vgg16_bn", pretrained=tmp_path / "vgg16_bn.pth").eval()
    x = torch.randn(1, 3, 32, 32)  # even sizes: ceil_mode pooling equals torchvision's floor pooling
    with torch.no_grad():
        assert torch.equal(vgg(x)["layer4"], features[:43](x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "resnet18"}, "name='resnet18' is unknown"),
        ({"name": "resnet50", "dilation": "none"}, "dilation='none' is invalid"),
        ({"name": "vgg16_bn", "dilation": "torchvision"}, "does not apply to vgg16_bn"),
        ({"name": "resnet50", "width_mult": 0}, "width_mult=0 is invalid"),
    ],
)
def test_build_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        meta_backbone(**kwargs)


def test_no_pretrained_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        meta_backbone("resnet50")
    assert "meaningless without ImageNet weights" in caplog.text
    assert "every strategy but finetune=bn passes its features on unnormalised" in caplog.text


def test_random_resnet101_features_outgrow_resnet50s_with_untrained_batchnorm() -> None:
    """Why the warning above names ResNet-101: with BN in eval mode on its initial statistics (mean 0,
    variance 1: no normalisation) each residual block adds to an unnormalised sum, and 33 blocks against 16
    leave layer4 hundreds of times larger (seeds 0-2: 421x, 866x, 445x; a frozen-BN smoke run's loss is
    NaN at step 3). Asserted at 100x, a fourth of the smallest."""
    stds = {}
    for name in ("resnet50", "resnet101"):
        torch.manual_seed(0)
        backbone = build_backbone(name, pretrained=None, warn_if_random=False).eval()
        h = torch.randn(1, 3, 65, 65)
        with torch.no_grad():
            for stage in ("layer0", "layer1", "layer2", "layer3", "layer4"):
                h = getattr(backbone, stage)(h)
        stds[name] = h.std().item()
    assert stds["resnet101"] > 100 * stds["resnet50"], stds


# ---------------------------------------------------------------------------------------------- weights
def to_format(backbone: Backbone, fmt: str) -> dict[str, Tensor]:
    """The backbone's state dict written the way a file of format ``fmt`` names it (plus a classifier)."""
    state = {}
    for key, value in backbone.state_dict().items():
        if fmt == "native":
            state[key] = value.clone()
            continue
        stage, rest = key.split(".", 1)
        if backbone.family == "vgg":
            index, tail = rest.split(".", 1)
            state[f"features.{VGG_SLICES[stage][0] + int(index)}.{tail}"] = value.clone()
        else:
            state[rest if stage == "layer0" else key] = value.clone()
    if fmt == "native":
        return state
    if backbone.family != "vgg":
        state |= {"fc.weight": torch.randn(10, 4), "fc.bias": torch.randn(10)}
    elif fmt == "torchvision":
        state |= {"classifier.0.weight": torch.randn(8, 4), "classifier.0.bias": torch.randn(8)}
    else:
        state |= {"pre_logits.fc1.weight": torch.randn(8, 4), "head.fc.weight": torch.randn(10, 8)}
    return state


CASES = [
    ("resnet50", "pspnet", ("fc.bias", "fc.weight")),
    ("resnet101", "pspnet", ("fc.bias", "fc.weight")),
    ("resnet50_tv", "torchvision", ("fc.bias", "fc.weight")),
    ("resnet50_tv", "timm", ("fc.bias", "fc.weight")),
    ("vgg16_bn", "torchvision", ("classifier.0.bias", "classifier.0.weight")),
    ("vgg16_bn", "timm", ("head.fc.weight", "pre_logits.fc1.weight")),
    ("resnet50", "native", ()),
    ("vgg16_bn", "native", ()),
]


@pytest.mark.parametrize(("name", "fmt", "dropped"), CASES)
def test_round_trip_every_format(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, fmt: str, dropped: tuple[str, ...]
) -> None:
    torch.manual_seed(1)
    source = build_backbone(name, width_mult=SMALL)
    for buf in source.buffers():  # make running stats distinguishable from a fresh init
        buf.add_(torch.rand_like(buf.float()).to(buf.dtype) if buf.is_floating_point() else 3)
    path = tmp_path / f"{name}_{fmt}.pth"
    torch.save(to_format(source, fmt), path)

    torch.manual_seed(2)
    target = build_backbone(name, width_mult=SMALL)
    with caplog.at_level(logging.INFO, logger="svfseg.backbones.weights"):
        report = load_backbone_weights(target, path)  # auto-detected
    # timm ResNets are named like torchvision ones: detection reports torchvision, the mapping is the same
    assert report.weights_format == ("torchvision" if (name, fmt) == ("resnet50_tv", "timm") else fmt)
    assert report.dropped == dropped and report.filled == ()
    assert report.loaded == len(source.state_dict())
    expected = source.state_dict()
    got = target.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    if dropped:
        assert f"dropped {len(dropped)} classifier key(s)" in caplog.text and dropped[0] in caplog.text

    explicit = build_backbone(name, width_mult=SMALL)
    assert load_backbone_weights(explicit, path, weights_format=fmt).weights_format == fmt
    assert all(torch.equal(explicit.state_dict()[k], expected[k]) for k in expected)


@pytest.fixture(scope="module")
def small_r50() -> Backbone:
    return build_backbone("resnet50", width_mult=SMALL)


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_wrapped_checkpoint_and_module_prefix(tmp_path: Path, small_r50: Backbone) -> None:
    state = {f"module.{k}": v for k, v in to_format(small_r50, "pspnet").items()}
    for wrapper in ("state_dict", "model"):
        path = _save({wrapper: state, "epoch": 3}, tmp_path / f"{wrapper}.pth")
        target = build_backbone("resnet50", width_mult=SMALL)
        report = load_backbone_weights(target, path)
        assert report.weights_format == "pspnet"
        assert torch.equal(target.layer0.conv3.weight, small_r50.layer0.conv3.weight)


def test_old_files_without_bn_counters_load(tmp_path: Path, small_r50: Backbone) -> None:
    state = {k: v for k, v in to_format(small_r50, "pspnet").items() if "num_batches_tracked" not in k}
    target = build_backbone("resnet50", width_mult=SMALL)
    report = load_backbone_weights(target, _save(state, tmp_path / "old.pth"))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in target.modules())
    assert len(report.filled) == n_bn == 55
    assert torch.equal(target.layer4[2].bn3.running_var, small_r50.layer4[2].bn3.running_var)


def test_missing_key_is_listed(tmp_path: Path, small_r50: Backbone) -> None:
    state = to_format(small_r50, "pspnet")
    del state["layer2.1.conv2.weight"], state["bn2.bias"]
    path = _save(state, tmp_path / "missing.pth")
    with pytest.raises(BackboneWeightsError) as err:
        load_backbone_weights(build_backbone("resnet50", width_mult=SMALL), path)
    msg = str(err.value)
    assert "2 missing key(s) [layer0.bn2.bias, layer2.1.conv2.weight]" in msg
    assert "0 unexpected" in msg and str(path) in msg


def test_unexpected_key_is_listed(tmp_path: Path, small_r50: Backbone) -> None:
    state = to_format(small_r50, "pspnet") | {"layer1.0.conv4.weight": torch.zeros(1)}
    path = _save(state, tmp_path / "extra.pth")
    with pytest.raises(BackboneWeightsError, match=r"1 unexpected key\(s\) \[layer1\.0\.conv4\.weight\]"):
        load_backbone_weights(build_backbone("resnet50", width_mult=SMALL), path)


def test_shape_mismatch_names_key_and_shapes(tmp_path: Path, small_r50: Backbone) -> None:
    state = to_format(small_r50, "pspnet") | {"conv3.weight": torch.zeros(7, 8, 3, 3)}
    path = _save(state, tmp_path / "shape.pth")
    with pytest.raises(BackboneWeightsError) as err:
        load_backbone_weights(build_backbone("resnet50", width_mult=SMALL), path)
    expected = "conv3.weight -> layer0.conv3.weight: file (7, 8, 3, 3) vs backbone (16, 8, 3, 3)"
    assert expected in str(err.value)


def test_full_width_file_into_narrow_backbone_is_refused(tmp_path: Path, small_r50: Backbone) -> None:
    wide = build_backbone("resnet50", width_mult=0.25)
    path = _save(to_format(wide, "pspnet"), tmp_path / "wide.pth")
    with pytest.raises(BackboneWeightsError, match=r"shape mismatch\(es\)"):
        load_backbone_weights(small_r50, path)


def test_missing_file_names_path_and_location(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet50_v2.pth"
    with pytest.raises(FileNotFoundError) as err:
        meta_backbone("resnet50", pretrained=path)
    assert str(path) in str(err.value) and "initmodel/resnet50_v2.pth" in str(err.value)
    assert "README" in str(err.value)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"PK\x03\x04 not really a zip archive")
    with pytest.raises(BackboneWeightsError, match="corrupt") as err:
        load_backbone_weights(build_backbone("resnet50", width_mult=SMALL), path)
    assert str(path) in str(err.value)


def test_non_tensor_entries_and_unknown_layout(tmp_path: Path) -> None:
    net = build_backbone("resnet50", width_mult=SMALL)
    with pytest.raises(BackboneWeightsError, match=r"non-tensor entries epoch"):
        load_backbone_weights(net, _save({"conv1.weight": torch.zeros(1), "epoch": 3}, tmp_path / "a.pth"))
    with pytest.raises(BackboneWeightsError, match="cannot tell the format"):
        load_backbone_weights(net, _save({"encoder.0.weight": torch.zeros(1)}, tmp_path / "b.pth"))


def test_wrong_family_is_explained(tmp_path: Path, small_r50: Backbone) -> None:
    path = _save(to_format(small_r50, "pspnet"), tmp_path / "resnet50_v2.pth")
    tv = build_backbone("resnet50_tv", width_mult=SMALL)
    with pytest.raises(BackboneWeightsError, match=r"'pspnet' does not fit backbone resnet50_tv"):
        load_backbone_weights(tv, path)
    vgg = build_backbone("vgg16_bn", width_mult=SMALL)
    with pytest.raises(BackboneWeightsError, match=r"come from a deep-stem ResNet .* backbone is vgg16_bn"):
        load_backbone_weights(vgg, path, weights_format="torchvision")
    with pytest.raises(ValueError, match="weights_format='caffe' is invalid"):
        load_backbone_weights(vgg, path, weights_format="caffe")
