"""apply_svf / merge_svf on torchvision models and small custom models: equality, selection rules, errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from torch import Tensor, nn

from svfseg.svf import (
    NoSVFLayerError,
    SVFConv2d,
    SVFLayer,
    SVFLinear,
    SVFSelectionError,
    SVFStateError,
    apply_svf,
    base_fingerprint,
    disable_svf,
    mark_only_svf_trainable,
    merge_svf,
    require_svf_layers,
    set_svf_execution,
    svf_layers,
    svf_state_dict,
)
from svfseg.svf.spectrum import singular_value_changes


def _rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max() / b.detach().abs().max())


def _n_convs_linears(model: nn.Module) -> int:
    return sum(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())


@pytest.fixture(scope="module")
def resnet_pair() -> tuple[nn.Module, nn.Module, list[str]]:
    """torchvision ResNet-50 (random init, eval) and its converted copy (every conv and the fc)."""
    torch.manual_seed(0)
    original = torchvision.models.resnet50(weights=None).eval()
    converted = copy.deepcopy(original)
    names = apply_svf(converted)
    return original, converted, names


@pytest.fixture(scope="module")
def vgg_pair() -> tuple[nn.Module, nn.Module, list[str]]:
    """torchvision VGG-16-bn (random init, eval) with its 13 convs converted.

    The classifier Linears are excluded only to keep the test's SVD time small (the ResNet fc covers Linear).
    """
    torch.manual_seed(0)
    original = torchvision.models.vgg16_bn(weights=None).eval()
    converted = copy.deepcopy(original)
    names = apply_svf(converted, exclude="classifier.*")
    return original, converted, names


def test_resnet50_converted_outputs_equal_original(
    resnet_pair: tuple[nn.Module, nn.Module, list[str]],
) -> None:
    original, converted, names = resnet_pair
    assert len(names) == 54 and names[0] == "conv1" and names[-1] == "fc"  # 53 convs + fc
    assert _n_convs_linears(converted) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = original(x)
        assert _rel_err(converted(x), ref) < 1e-5  # merged, cached path
        set_svf_execution(converted, "three_op")
        assert _rel_err(converted(x), ref) < 1e-5
        set_svf_execution(converted, "auto")
    grad_out = converted(x)  # grad mode, trainable s: factorised path
    assert _rel_err(grad_out, ref) < 1e-5


def test_resnet50_merge_restores_plain_layers(resnet_pair: tuple[nn.Module, nn.Module, list[str]]) -> None:
    original, converted, names = resnet_pair
    merged = copy.deepcopy(converted)
    with torch.no_grad():
        merged.layer3[1].conv2.s.mul_(1.1)  # a fine-tuned layer must merge its new singular values
        x = torch.randn(1, 3, 64, 64)
        svf_out = merged(x)
    assert merge_svf(merged) == names
    assert not list(svf_layers(merged))
    assert type(merged.layer2[0].downsample[0]) is nn.Conv2d and type(merged.fc) is nn.Linear
    assert merged.layer2[0].conv2.stride == (2, 2) and merged.conv1.padding == (3, 3)
    with torch.no_grad():
        assert _rel_err(merged(x), svf_out) < 1e-5
        assert _rel_err(merged.layer1[0].conv1.weight, original.layer1[0].conv1.weight) < 1e-6
        assert _rel_err(merged.fc.bias, original.fc.bias) == 0.0
    assert merged.layer1[0].conv1.weight.requires_grad and not merged.fc.bias.requires_grad


def test_vgg16_bn_converted_outputs_equal_original(vgg_pair: tuple[nn.Module, nn.Module, list[str]]) -> None:
    original, converted, names = vgg_pair
    assert len(names) == 13 and names[-1] == "features.40"
    assert isinstance(converted.features[0], SVFConv2d) and converted.features[0].rank == 27
    assert type(converted.classifier[6]) is nn.Linear
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref_feat, ref = original.features(x), original(x)
        assert _rel_err(converted.features(x), ref_feat) < 1e-5
        assert _rel_err(converted(x), ref) < 1e-5


def _small() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


def test_include_exclude_globs_and_returned_names() -> None:
    model = _small()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the depthwise conv is not selected, so no warning
        names = apply_svf(model, include=["0", "2.*", "5"], exclude="2.0")
    assert names == ["0", "2.1", "5"]
    assert [n for n, _ in svf_layers(model)] == names
    assert type(model[2][0]) is nn.Conv2d

    model = _small()
    assert apply_svf(copy.deepcopy(model), include="[05]") == ["0", "5"]  # a str is one pattern


def test_depthwise_skipped_with_warning_naming_layer() -> None:
    model = _small()
    with pytest.warns(UserWarning, match=r"skipping depthwise conv '2\.0' \(groups=8, in_channels=8\)"):
        names = apply_svf(model)
    assert names == ["0", "2.1", "5"]
    with (
        pytest.warns(UserWarning, match="depthwise"),
        pytest.raises(SVFSelectionError, match="no convertible"),
    ):
        apply_svf(_small(), include="2.0")


def test_selection_errors_name_patterns_and_available_layers() -> None:
    with pytest.raises(
        SVFSelectionError,
        match=r"include pattern\(s\) \['layr2\.\*'\] match no.*available names: \[0, 2\.0, 2\.1, 5\]",
    ):
        apply_svf(_small(), include=["0", "layr2.*"])
    with pytest.raises(SVFSelectionError, match=r"exclude pattern\(s\) \['fc'\]"):
        apply_svf(_small(), exclude="fc")
    with pytest.raises(
        SVFSelectionError, match=r"include=\('0',\), exclude=\('0',\)\) selects no convertible"
    ):
        apply_svf(_small(), include="0", exclude="0")
    with pytest.raises(SVFSelectionError, match="bare Conv2d"):
        apply_svf(nn.Conv2d(3, 4, 3))


def test_reconversion_is_an_error_but_a_second_disjoint_selection_works() -> None:
    model = _small()
    assert apply_svf(model, include="0", train=()) == ["0"]
    before = model[0]
    with pytest.raises(SVFSelectionError, match=r"already SVF layers: \[0\]"):
        apply_svf(model, include=["0", "5"])
    assert model[0] is before and type(model[5]) is nn.Linear  # nothing converted on error
    assert apply_svf(model, include=["2.1", "5"]) == ["2.1", "5"]
    assert not model[0].s.requires_grad and model[5].s.requires_grad


def test_subclass_skipped_and_shared_module_converted_once() -> None:
    class Scaled(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            return 2 * super().forward(x)

    shared = nn.Linear(4, 4)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared), "c": Scaled(4, 4)})
    with pytest.warns(UserWarning, match=r"skipping 'c' \(Scaled\)"):
        names = apply_svf(model)
    assert names == ["a"]
    assert model["a"] is model["b"][0] and isinstance(model["a"], SVFLinear)


def test_device_dtype_training_flag_and_freezing() -> None:
    model = _small().double()
    model[0].eval()
    with pytest.warns(UserWarning, match="depthwise"):
        apply_svf(model, train=("u", "s"))
    layer = model[0]
    assert isinstance(layer, SVFLayer) and layer.u.dtype == torch.float64 and not layer.training
    assert model[5].training
    assert layer.u.requires_grad and layer.s.requires_grad and not layer.v.requires_grad
    assert not layer.bias.requires_grad
    # BN weight + bias and the depthwise conv weight + bias are the non-SVF trainables.
    assert mark_only_svf_trainable(model) == 4
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["0.s", "0.u", "2.1.s", "2.1.u", "5.s", "5.u"]


def test_disable_svf_on_model_and_errors_without_layers() -> None:
    model = _small().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    with pytest.warns(UserWarning, match="depthwise"):
        apply_svf(model, parametrization="exp")
    with torch.no_grad():
        for _, layer in svf_layers(model):
            layer.s_delta.uniform_(-0.5, 0.5)
        tuned = model(x)
        assert _rel_err(tuned, ref) > 1e-2
        with disable_svf(model):
            assert _rel_err(model(x), ref) < 1e-5
        assert torch.equal(model(x), tuned)
    with pytest.raises(SVFSelectionError, match="holds no SVF layer"), disable_svf(_small()):
        pass


def test_every_tool_that_needs_svf_layers_raises_the_one_error_naming_itself() -> None:
    model = _small()
    with pytest.warns(UserWarning, match="depthwise"):
        apply_svf(model)
    assert list(require_svf_layers(model, "mine")) == [name for name, _ in svf_layers(model)]
    plain = _small()
    for action, call in [
        ("mine", lambda: require_svf_layers(plain, "mine")),
        ("set_svf_execution", lambda: set_svf_execution(plain, "auto")),
        ("svf_state_dict", lambda: svf_state_dict(plain)),
        ("base_fingerprint", lambda: base_fingerprint(plain)),
        ("singular_value_changes", lambda: singular_value_changes(plain)),
    ]:
        with pytest.raises(NoSVFLayerError, match=rf"^{action}: Sequential holds no SVF layer; convert it"):
            call()
    # the error that a caller caught before (selection, state, ValueError, RuntimeError) still catches it
    assert issubclass(NoSVFLayerError, SVFSelectionError) and issubclass(NoSVFLayerError, SVFStateError)
    assert issubclass(NoSVFLayerError, ValueError) and issubclass(NoSVFLayerError, RuntimeError)
