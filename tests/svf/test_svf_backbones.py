"""SVF on the project backbones: exact outputs after conversion and the reference's singular-value counts."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import Tensor, nn

from svfseg.backbones import build_backbone
from svfseg.svf import (
    SVFConv2d,
    apply_svf,
    mark_only_svf_trainable,
    merge_svf,
    svf_state_dict,
    svf_summary,
)

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
TRAINED_STAGES = ["layer2.*", "layer3.*", "layer4.*"]


def _convert_like_reference(name: str) -> tuple[nn.Module, nn.Module, dict[str, Tensor]]:
    """All five stages converted at full rank; s trains in layer2-4 only."""
    torch.manual_seed(0)
    original = build_backbone(name, pretrained=None).eval()
    with torch.no_grad():
        ref = original(X)
    converted = copy.deepcopy(original)
    apply_svf(converted, include=["layer0.*", "layer1.*"], train=())
    apply_svf(converted, include=TRAINED_STAGES, train=("s",))
    mark_only_svf_trainable(converted)
    return original, converted, ref


@pytest.fixture(scope="module")
def resnet50() -> tuple[nn.Module, nn.Module, dict[str, Tensor]]:
    return _convert_like_reference("resnet50")


@pytest.fixture(scope="module")
def vgg16() -> tuple[nn.Module, nn.Module, dict[str, Tensor]]:
    return _convert_like_reference("vgg16_bn")


def _assert_equal_features(model: nn.Module, ref: dict[str, Tensor]) -> None:
    with torch.no_grad():
        out = model(X)
    for stage, r in ref.items():
        err = float((out[stage] - r).abs().max() / r.abs().max())
        assert err < 1e-5, f"{stage}: relative max error {err:.2e}"


def test_resnet50_counts_match_reference(resnet50: tuple[nn.Module, nn.Module, dict[str, Tensor]]) -> None:
    _, converted, _ = resnet50
    summary = svf_summary(converted)
    counts = {r.stage: (r.layers, r.singular_values, r.trainable) for r in summary.rows}
    assert counts == {
        "layer0": (3, 27 + 64 + 128, 0),  # full rank: the reference keeps 24 of the stem's 27
        "layer1": (10, 704, 0),
        "layer2": (13, 1_792, 1_792),
        "layer3": (19, 5_120, 5_120),
        "layer4": (10, 5_632, 5_632),
    }
    assert summary.total.trainable == 12_544 and summary.total.singular_values == 13_467
    assert summary.other_trainable == 0
    text = str(summary)
    assert "layer3      19            5,120      5,120" in text and "12,544" in text


def test_resnet50_outputs_equal_after_conversion_and_merge(
    resnet50: tuple[nn.Module, nn.Module, dict[str, Tensor]],
) -> None:
    _, converted, ref = resnet50
    assert isinstance(converted.layer3[0].conv2, SVFConv2d)
    assert converted.layer3[0].conv2.dilation == (2, 2) and converted.layer4[2].conv2.padding == (4, 4)
    _assert_equal_features(converted, ref)
    out = converted(X)  # grad mode: layer2-4 factorised, layer0-1 merged
    assert out["layer4"].requires_grad and not out["layer1"].requires_grad
    for stage in ("layer2", "layer4"):
        assert float((out[stage].detach() - ref[stage]).abs().max() / ref[stage].abs().max()) < 1e-5
    merged = copy.deepcopy(converted)
    assert len(merge_svf(merged)) == 55
    _assert_equal_features(merged, ref)
    assert not any(p.requires_grad for p in merged.layer0.parameters())
    assert all(m.weight.requires_grad for m in merged.layer2.modules() if isinstance(m, nn.Conv2d))


def test_resnet50_artifact_is_small(resnet50: tuple[nn.Module, nn.Module, dict[str, Tensor]]) -> None:
    _, converted, _ = resnet50
    state = svf_state_dict(converted)
    assert sum(t.numel() for t in state["tensors"].values()) == 12_544
    buf = io.BytesIO()
    torch.save(state, buf)
    assert 12_544 * 4 < buf.getbuffer().nbytes < 80_000  # 49 KB of fp32 plus names and fingerprints


def test_vgg16_bn_counts_and_outputs(vgg16: tuple[nn.Module, nn.Module, dict[str, Tensor]]) -> None:
    _, converted, ref = vgg16
    counts = {r.stage: (r.layers, r.singular_values, r.trainable) for r in svf_summary(converted).rows}
    assert counts == {
        "layer0": (2, 27 + 64, 0),
        "layer1": (2, 256, 0),
        "layer2": (3, 768, 768),
        "layer3": (3, 1_536, 1_536),
        "layer4": (3, 1_536, 1_536),
    }
    assert sum(c[2] for c in counts.values()) == 3_840
    _assert_equal_features(converted, ref)
