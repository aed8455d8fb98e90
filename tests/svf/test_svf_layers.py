"""SVF layers on small convs / linears: exact decomposition, execution modes, merged-weight cache, metadata."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from svfseg.svf import SVFConv2d, SVFLinear, SVFStateError, disable_svf

CONV_CASES = {
    "3x3": dict(in_channels=6, out_channels=10, kernel_size=3, padding=1),
    "1x1_stride2": dict(in_channels=12, out_channels=5, kernel_size=1, stride=2),
    "5x3_dilated": dict(in_channels=4, out_channels=7, kernel_size=(5, 3), padding=(4, 2), dilation=2),
    "stem_27": dict(in_channels=3, out_channels=64, kernel_size=3, stride=2, padding=1, bias=False),
    "groups2": dict(in_channels=8, out_channels=6, kernel_size=3, padding=1, groups=2),
    "groups4_stride": dict(in_channels=8, out_channels=12, kernel_size=3, stride=2, groups=4),
    "reflect": dict(in_channels=5, out_channels=6, kernel_size=3, padding=2, padding_mode="reflect"),
    "circular_groups": dict(
        in_channels=6, out_channels=4, kernel_size=3, padding=1, groups=2, padding_mode="circular"
    ),
    "replicate_same": dict(
        in_channels=3, out_channels=4, kernel_size=4, padding="same", padding_mode="replicate"
    ),
    "zeros_same_dil": dict(in_channels=3, out_channels=5, kernel_size=3, padding="same", dilation=3),
}


def _rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max() / b.detach().abs().max())


def _conv(name: str, dtype: torch.dtype = torch.float32) -> nn.Conv2d:
    conv = nn.Conv2d(**CONV_CASES[name]).to(dtype)
    if conv.bias is not None:
        with torch.no_grad():
            conv.bias.normal_()  # a visible bias, so a lost bias fails the tests
    return conv


def _materialized(layer: SVFConv2d | SVFLinear, x: Tensor) -> Tensor:
    """The layer as one op with W = U diag(s) V^T rebuilt in the graph: the reference for gradients."""
    return layer._forward_dense(x, layer.merged_weight())


def _count_merges(layer: SVFConv2d | SVFLinear, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original: Callable[..., Tensor] = layer.merged_weight

    def counting(dtype: torch.dtype | None = None) -> Tensor:
        calls[0] += 1
        return original(dtype)

    monkeypatch.setattr(layer, "merged_weight", counting)
    return calls


@pytest.mark.parametrize("name", sorted(CONV_CASES))
@pytest.mark.parametrize("execution", ["auto", "three_op"])
def test_conv_conversion_reproduces_output(name: str, execution: str) -> None:
    conv = _conv(name)
    layer = SVFConv2d.from_conv(conv, execution=execution)
    x = torch.randn(2, conv.in_channels, 11, 13)
    ref = conv(x)
    with torch.no_grad():
        assert _rel_err(layer(x), ref) < 2e-6
        assert _rel_err(_materialized(layer, x), ref) < 2e-6
    # Grad mode with a trainable s: the factorised path in auto.
    assert _rel_err(layer(x).detach(), ref) < 2e-6
    assert layer.stride == conv.stride and layer.dilation == conv.dilation and layer.padding == conv.padding


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv_full_rank_per_group_matches_numpy_svd(name: str) -> None:
    conv = _conv(name)
    layer = SVFConv2d.from_conv(conv)
    g = conv.groups
    w = conv.weight.detach().double().numpy().reshape(g, conv.out_channels // g, -1)
    golden = np.concatenate([np.linalg.svd(m, compute_uv=False) for m in w])  # independent LAPACK call
    rank_g = min(w.shape[1], w.shape[2])
    assert layer.rank == g * rank_g == layer.s.numel()  # full rank, no rounding to a multiple of 4
    assert layer.u.shape == (conv.out_channels, rank_g)
    assert layer.v.shape == (g * rank_g, w.shape[2])
    np.testing.assert_allclose(layer.s.detach().double().numpy(), golden, rtol=1e-6, atol=1e-7)
    # Block-diagonal structure: merged weight equals the original kernel tensor.
    assert _rel_err(layer.merged_weight().detach(), conv.weight.detach()) < 1e-6
    # Orthonormal factors per group.
    u = layer.u.detach().double().reshape(g, -1, rank_g)
    eye = torch.eye(rank_g, dtype=torch.float64).expand(g, -1, -1)
    assert torch.allclose(u.transpose(1, 2) @ u, eye, atol=1e-5)
    # Sign convention: largest-|.| entry of each left singular vector is positive.
    idx = u.abs().argmax(dim=1, keepdim=True)
    assert bool((torch.gather(u, 1, idx) > 0).all())


def test_stem_keeps_all_27_singular_values() -> None:
    layer = SVFConv2d.from_conv(_conv("stem_27"))
    assert layer.rank == 27  # the reference keeps 24 (rounds down to a multiple of 4)


def test_linear_conversion_on_3d_input() -> None:
    lin = nn.Linear(9, 5)
    layer = SVFLinear.from_linear(lin)
    x = torch.randn(2, 4, 9)
    assert layer.rank == 5 and layer.u.shape == (5, 5) and layer.v.shape == (5, 9)
    for execution in ("auto", "three_op"):
        layer.execution = execution
        assert _rel_err(layer(x).detach(), lin(x).detach()) < 2e-6
        with torch.no_grad():
            assert _rel_err(layer(x), lin(x)) < 2e-6
    with torch.no_grad():
        assert _rel_err(_materialized(layer, x), lin(x)) < 2e-6


def test_dtype_and_device_preserved_float64() -> None:
    conv = _conv("groups2", torch.float64)
    layer = SVFConv2d.from_conv(conv, svd_dtype=torch.float32)
    assert {t.dtype for t in (layer.u, layer.s, layer.v, layer.s0, layer.bias)} == {torch.float64}
    assert layer.u.device == conv.weight.device
    assert layer.svd_dtype == "float32"
    x = torch.randn(1, 8, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        # fp32 SVD: error is fp32 rounding of the factors.
        assert _rel_err(layer(x), conv(x)) < 1e-5


def test_bad_options_are_rejected() -> None:
    conv = _conv("3x3")
    with pytest.raises(ValueError, match="execution='fast'"):
        SVFConv2d.from_conv(conv, execution="fast")
    with pytest.raises(ValueError, match="parametrization='log'"):
        SVFConv2d.from_conv(conv, parametrization="log")
    with pytest.raises(ValueError, match=r"unknown \['w'\]"):
        SVFConv2d.from_conv(conv, train=("s", "w"))
    with pytest.raises(ValueError, match=r"svd_dtype=torch\.int64"):
        SVFConv2d.from_conv(conv, svd_dtype=torch.int64)


def test_cache_reused_until_optimizer_step_and_equals_factorised(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = _conv("groups2")
    layer = SVFConv2d.from_conv(conv, train=("s",))
    calls = _count_merges(layer, monkeypatch)
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        y1 = layer(x)
        y2 = layer(x)
    assert calls[0] == 1 and torch.equal(y1, y2)
    cached = layer._cache[1]  # type: ignore[index]

    # An in-place optimizer step (foreach SGD, no forward in between) must invalidate the cache.
    opt = torch.optim.SGD([layer.s], lr=0.1, momentum=0.9)
    layer.s.grad = torch.linspace(-1.0, 1.0, layer.rank)
    opt.step()
    with torch.no_grad():
        y3 = layer(x)
    assert calls[0] == 2 and layer._cache[1] is not cached  # type: ignore[index]
    assert not torch.allclose(y3, y1, atol=1e-3)
    layer(x).square().mean().backward()  # grad mode with trainable s: factorised, no merge
    assert calls[0] == 2
    layer.execution = "three_op"
    with torch.no_grad():
        y_fact = layer(x)
    assert _rel_err(y3, y_fact) < 2e-6

    # An in-place edit without an optimizer, and a state_dict load, also invalidate the cache.
    layer.execution = "auto"
    with torch.no_grad():
        layer.v.mul_(2.0)
        y4 = layer(x)
        b = conv.bias.view(1, -1, 1, 1)
        assert calls[0] == 3 and _rel_err(y4 - b, 2 * (y3 - b)) < 2e-6
        fresh = SVFConv2d.from_conv(conv)
        layer.load_state_dict(fresh.state_dict())
        assert _rel_err(layer(x), conv(x)) < 2e-6
        assert calls[0] == 4
        # Edits through .data bypass version counters (nothing is read back from the device to notice
        # them): the cache serves the old weight until clear_cache().
        layer.s.data.mul_(0.5)
        assert _rel_err(layer(x), conv(x)) < 2e-6 and calls[0] == 4
        layer.clear_cache()
        assert _rel_err(layer(x) - b, (conv(x) - b) / 2) < 2e-6 and calls[0] == 5
        layer.u.data.mul_(2.0)
        layer.clear_cache()
        assert _rel_err(layer(x), conv(x)) < 2e-6 and calls[0] == 6


def test_auto_frozen_layer_runs_merged_once_and_materialize_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conv = _conv("3x3")
    with pytest.raises(ValueError, match="execution='materialize' is invalid"):
        SVFConv2d.from_conv(conv, execution="materialize")
    x = torch.randn(1, 6, 8, 8)
    frozen = SVFConv2d.from_conv(conv, train=())
    calls = _count_merges(frozen, monkeypatch)
    xg = x.clone().requires_grad_(True)
    frozen(xg).sum().backward()  # grad enabled but no SVF tensor trains: one merged conv, cached
    frozen(xg).sum().backward()
    assert calls[0] == 1
    xr = x.clone().requires_grad_(True)
    conv(xr).sum().backward()
    assert _rel_err(xg.grad / 2, xr.grad) < 2e-6  # data gradient flows through the merged conv


def test_inference_mode_cache_is_usable_with_grad_later() -> None:
    conv = _conv("3x3")
    layer = SVFConv2d.from_conv(conv, train=())
    x = torch.randn(1, 6, 8, 8)
    with torch.inference_mode():
        y = layer(x)
    assert _rel_err(y, conv(x).detach()) < 2e-6
    xg = x.clone().requires_grad_(True)
    layer(xg).sum().backward()  # would fail if the cached weight were an inference tensor
    assert xg.grad is not None and xg.grad.shape == x.shape


def test_exp_parametrization() -> None:
    conv = _conv("groups4_stride")
    direct = SVFConv2d.from_conv(conv)
    exp = SVFConv2d.from_conv(conv, parametrization="exp")
    names = {n for n, _ in exp.named_parameters()}
    assert names == {"u", "s_delta", "v", "bias"} and "s0" in dict(exp.named_buffers())
    assert torch.equal(exp.s_delta, torch.zeros(exp.rank)) and exp.s_delta.requires_grad
    x = torch.randn(2, 8, 9, 9)
    assert torch.equal(exp(x), direct(x))  # s0 * exp(0) == s exactly
    with torch.no_grad():
        exp.s_delta.fill_(float(np.log(2.0)))
        exp.execution = "three_op"
        y = exp(x)
    assert torch.allclose(exp.effective_s(), 2 * exp.s0)
    with torch.no_grad():
        direct.s.mul_(2.0)
        assert _rel_err(y, direct(x)) < 2e-6


def test_disable_svf_uses_original_singular_values() -> None:
    conv = _conv("3x3")
    model = nn.Sequential(SVFConv2d.from_conv(conv))
    x = torch.randn(1, 6, 8, 8)
    with torch.no_grad():
        model[0].s.mul_(1.5)
        changed = model(x)
        with disable_svf(model):
            assert _rel_err(model(x), conv(x)) < 2e-6
            with disable_svf(model):
                pass
            assert _rel_err(model(x), conv(x)) < 2e-6  # nested exit keeps the outer state
        assert torch.equal(model(x), changed)


def test_extra_state_round_trip_weights_only() -> None:
    conv = _conv("groups2")
    layer = SVFConv2d.from_conv(conv, train=("s", "v"), parametrization="exp")
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    meta = state["_extra_state"]
    assert meta == {
        "version": 1,
        "kind": "conv2d",
        "fingerprint": layer.fingerprint,
        "parametrization": "exp",
        "train": ["s", "v"],
        "groups": 2,
        "rank": 6,  # 2 groups x min(6/2, 8/2 * 9)
        "svd_dtype": "float64",
    }
    other = SVFConv2d.from_conv(_conv("groups2"), parametrization="exp")
    assert other.fingerprint != layer.fingerprint
    other.load_state_dict(state)
    assert other.fingerprint == layer.fingerprint and other.train_subspaces == ("s", "v")

    bad = dict(state)
    bad["_extra_state"] = {**meta, "groups": 1}
    with pytest.raises(SVFStateError, match="'groups': checkpoint has 1, this layer has 2"):
        other.load_state_dict(bad)


def _grads(layer: SVFConv2d, x: Tensor, execution: str) -> tuple[Tensor, ...]:
    layer.execution = execution
    xg = x.clone().requires_grad_(True)
    out = layer(xg)
    weights = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)  # a non-uniform dL/dy
    params = [layer.s] + ([layer.bias] if layer.bias is not None and layer.bias.requires_grad else [])
    grads = torch.autograd.grad((out * weights).sum(), [xg, *params])
    return (out.detach(), *grads)


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_fused_training_path_matches_composed_three_ops(name: str) -> None:
    layer = SVFConv2d.from_conv(_conv(name))
    if layer.bias is not None:
        layer.bias.requires_grad_(True)  # the fused backward also serves a trainable bias
    x = torch.randn(2, layer.in_channels, 11, 13)
    fused, composed = _grads(layer, x, "auto"), _grads(layer, x, "three_op")
    assert len(fused) == len(composed) == (4 if layer.bias is not None else 3)
    for a, b in zip(fused, composed):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    unbatched = _grads(layer, x[0], "auto")  # (C, H, W) input
    torch.testing.assert_close(unbatched[0], composed[0][0], rtol=1e-4, atol=1e-5)


def test_fused_path_keeps_one_activation_less_than_composed() -> None:
    layer = SVFConv2d.from_conv(nn.Conv2d(16, 32, 3, padding=1, bias=False))
    x = torch.randn(2, 16, 12, 12, requires_grad=True)
    saved_bytes = {}
    for execution in ("auto", "three_op"):
        layer.execution = execution
        sizes: list[int] = []

        def pack(t: Tensor, sizes: list[int] = sizes) -> Tensor:
            sizes.append(t.numel() * t.element_size() if t.dim() == 4 and t.shape[0] == 2 else 0)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x)
        saved_bytes[execution] = sizes
    activation = 2 * layer.rank * 12 * 12 * 4  # one (N, R, H, W) float32 tensor
    assert sum(saved_bytes["auto"]) == activation  # V^T x only (x itself is not needed for frozen V)
    assert sum(saved_bytes["three_op"]) == x.numel() * 4 + 2 * activation  # x, V^T x and the scaled copy


def test_trainable_u_or_v_uses_composed_graph() -> None:
    conv = _conv("groups2")
    layer = SVFConv2d.from_conv(conv, train=("u", "s"))
    x = torch.randn(2, 8, 9, 9)
    layer(x).sum().backward()
    assert layer.u.grad is not None and layer.s.grad is not None and layer.v.grad is None
    reference = SVFConv2d.from_conv(conv, train=("u", "s"))
    _materialized(reference, x).sum().backward()
    torch.testing.assert_close(layer.u.grad, reference.u.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.s.grad, reference.s.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_cache_sees_every_optimizer_implementation(
    impl: dict[str, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fused optimizers do not bump version counters; the cache must still see their update of u."""
    conv = _conv("3x3")
    layer = SVFConv2d.from_conv(conv, train=("u",))
    frozen = SVFConv2d.from_conv(conv, train=())
    frozen_calls = _count_merges(frozen, monkeypatch)
    x = torch.randn(1, 6, 8, 8)
    with torch.no_grad():
        before = layer(x)
        frozen(x)
    layer.u.grad = torch.ones_like(layer.u)
    torch.optim.SGD([layer.u], lr=0.01, **impl).step()
    with torch.no_grad():
        after = layer(x)
        layer.execution = "three_op"
        torch.testing.assert_close(after, layer(x), rtol=1e-5, atol=1e-6)
        frozen(x)
    assert not torch.allclose(before, after, atol=1e-4)
    assert frozen_calls[0] == 1  # a frozen layer keeps its cache across optimizer steps


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_layer_from_shapes_matches_decomposed_structure_and_loads_its_state(name: str) -> None:
    """from_shapes: no SVD, same tensors and shapes as a decomposed layer; refuses to run until loaded."""
    conv = _conv(name)
    decomposed = SVFConv2d.from_conv(conv)
    shell = SVFConv2d.from_conv(conv, from_shapes=True)
    state = decomposed.state_dict()
    assert {k: tuple(v.shape) for k, v in shell.state_dict().items() if torch.is_tensor(v)} == {
        k: tuple(v.shape) for k, v in state.items() if torch.is_tensor(v)
    }
    x = torch.randn(2, conv.in_channels, 11, 13)
    with pytest.raises(SVFStateError, match="built from shapes only"):
        shell(x)
    shell.load_state_dict(state)
    assert shell.fingerprint == decomposed.fingerprint
    with torch.no_grad():
        assert torch.equal(shell(x), decomposed(x))
