"""Checkpoints: the small SVF artifact (fingerprinted) and full state dicts that never re-run the SVD."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from svfseg.svf import (
    SVFStateError,
    apply_svf,
    base_fingerprint,
    load_svf_state_dict,
    mark_only_svf_trainable,
    svf_layers,
    svf_state_dict,
)


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, groups=2, bias=False),
        nn.Flatten(),
        nn.LazyLinear(5),
    )


def _converted(seed: int, **options: Any) -> nn.Sequential:
    model = _net(seed)
    model(torch.zeros(1, 3, 6, 6))  # materialise the lazy Linear
    model.eval()
    apply_svf(model, **options)
    mark_only_svf_trainable(model)
    return model


def _tune(model: nn.Module) -> None:
    """Move every trainable SVF tensor to a distinct value (what training would do)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.linspace(-0.1, 0.2, p.numel()).reshape(p.shape))


def _roundtrip(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


X = torch.randn(2, 3, 6, 6)


def test_artifact_holds_only_trainable_tensors_and_restores_exactly() -> None:
    model = _converted(0)
    _tune(model)
    state = _roundtrip(svf_state_dict(model))
    assert state["format"] == "svfseg.svf" and state["version"] == 2
    assert state["modules"] == {}  # nothing but SVF factors trains
    assert sorted(state["tensors"]) == ["0.s", "3.s", "5.s"]
    assert [state["tensors"][k].numel() for k in ("0.s", "3.s", "5.s")] == [8, 6, 5]
    assert sorted(state["layers"]) == ["0", "3", "5"]

    fresh = _converted(0)
    with torch.no_grad():
        assert not torch.allclose(fresh(X), model(X), atol=1e-4)
        load_svf_state_dict(fresh, state)
        assert torch.equal(fresh(X), model(X))  # same weights -> same SVD -> identical factors and outputs
    for (_, a), (_, b) in zip(svf_layers(fresh), svf_layers(model)):
        assert torch.equal(a.s, b.s)


def test_fingerprints_are_sha256_of_the_original_weights() -> None:
    model = _net(0)
    model(torch.zeros(1, 3, 6, 6))
    conv = model[0]
    h = hashlib.sha256(b"svfseg-layer|conv2d|")
    h.update(f"{tuple(conv.weight.shape)}|{conv.weight.dtype}|".encode())
    h.update(conv.weight.detach().numpy().tobytes())
    h.update(b"|bias|")
    h.update(f"{tuple(conv.bias.shape)}|{conv.bias.dtype}|".encode())
    h.update(conv.bias.detach().numpy().tobytes())
    apply_svf(model)
    assert model[0].fingerprint == h.hexdigest()

    expected = hashlib.sha256(b"svfseg.svf|base")
    for name, layer in sorted(svf_layers(model)):
        expected.update(f"|{name}={layer.fingerprint}".encode())
    assert base_fingerprint(model) == expected.hexdigest()
    before = base_fingerprint(model)
    _tune(model)  # training s does not change the base fingerprint
    assert base_fingerprint(model) == before


def test_other_base_weights_are_refused_without_writing() -> None:
    state = svf_state_dict(_converted(0))
    other = _converted(1)
    s_before = other[0].s.detach().clone()
    with pytest.raises(
        SVFStateError, match=r"other base weights: fingerprint mismatch at 3 of 3 layer\(s\), e\.g\. 0:"
    ):
        load_svf_state_dict(other, state)
    assert torch.equal(other[0].s, s_before)


def test_missing_unexpected_keys_and_layers_are_listed() -> None:
    state = svf_state_dict(_converted(0, train=("u", "s")))
    assert sorted(state["tensors"]) == ["0.s", "0.u", "3.s", "3.u", "5.s", "5.u"]
    with pytest.raises(SVFStateError, match=r"missing \[\]; unexpected \[0\.u, 3\.u, 5\.u\]"):
        load_svf_state_dict(_converted(0), state)
    with pytest.raises(SVFStateError, match=r"missing \[0\.v, 3\.v, 5\.v\]; unexpected \[\]"):
        load_svf_state_dict(_converted(0, train=("u", "s", "v")), state)
    with pytest.raises(
        SVFStateError, match=r"missing from the artifact: \[\]; not SVF layers in the model: \[5\]"
    ):
        load_svf_state_dict(_converted(0, include=["0", "3"]), state)
    with pytest.raises(SVFStateError, match="'parametrization' differs at 3 layer"):
        load_svf_state_dict(_converted(0, train=("u", "s"), parametrization="exp"), state)


def test_header_and_shape_errors() -> None:
    model = _converted(0)
    state = svf_state_dict(model)
    with pytest.raises(SVFStateError, match="not an SVF artifact: format='other'"):
        load_svf_state_dict(model, {**state, "format": "other"})
    with pytest.raises(SVFStateError, match="version 3 is not supported"):
        load_svf_state_dict(model, {**state, "version": 3})
    bad = {**state, "tensors": {**state["tensors"], "3.s": torch.zeros(7)}}
    with pytest.raises(SVFStateError, match=r"'3\.s' has shape \(7,\), model expects \(6,\)"):
        load_svf_state_dict(model, bad)
    with pytest.raises(SVFStateError, match="holds no SVF layer"):
        svf_state_dict(_net(0))


def test_exp_artifact_saves_s_delta() -> None:
    model = _converted(0, parametrization="exp")
    _tune(model)
    state = _roundtrip(svf_state_dict(model))
    assert sorted(state["tensors"]) == ["0.s_delta", "3.s_delta", "5.s_delta"]
    fresh = _converted(0, parametrization="exp")
    load_svf_state_dict(fresh, state)
    with torch.no_grad():
        assert torch.equal(fresh(X), model(X))


def test_full_state_dict_restores_factors_without_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    trained = _converted(0, train=("u", "s"))
    _tune(trained)
    full = _roundtrip(trained.state_dict())
    assert full["0._extra_state"]["fingerprint"] == trained[0].fingerprint
    assert {"0.u", "0.s", "0.v", "0.s0", "0.bias"} <= set(full)

    target = _converted(7, train=("u", "s"))  # other random weights: only the checkpoint can make it equal

    def no_svd(*args: Any, **kwargs: Any) -> Tensor:
        raise AssertionError("load_state_dict must not run an SVD")

    monkeypatch.setattr(torch.linalg, "svd", no_svd)
    target.load_state_dict(full)
    with torch.no_grad():
        assert torch.equal(target(X), trained(X))
    assert [layer.fingerprint for _, layer in svf_layers(target)] == [
        layer.fingerprint for _, layer in svf_layers(trained)
    ]
    # The artifact of the reloaded model now matches the trained base.
    load_svf_state_dict(target, svf_state_dict(trained))
