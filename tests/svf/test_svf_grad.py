"""Gradient flow: only the selected subspaces get gradients and move; everything frozen stays bit-identical."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from svfseg.svf import SVFLayer, apply_svf, mark_only_svf_trainable, set_svf_execution, svf_layers


def _net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=True),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def _batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(4, 3, 10, 10, generator=g), torch.randint(0, 4, (4,), generator=g)


def _sgd_steps(model: nn.Module, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = _batch()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, Tensor)}


@pytest.mark.parametrize(
    ("train", "moving"),
    [(("s",), {"s"}), (("u", "v"), {"u", "v"}), (("u", "s", "v"), {"u", "s", "v"})],
)
def test_only_selected_subspaces_receive_gradients_and_change(
    train: tuple[str, ...], moving: set[str]
) -> None:
    model = _net()
    apply_svf(model, train=train)
    mark_only_svf_trainable(model)
    x, y = _batch()
    nn.functional.cross_entropy(model(x), y).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    expected = {f"{layer}.{t}" for layer in ("0", "3", "8") for t in moving}
    assert with_grad == expected
    for name in expected:
        assert float(dict(model.named_parameters())[name].grad.abs().sum()) > 0

    model.zero_grad()
    before = _snapshot(model)
    _sgd_steps(model)
    after = _snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == expected  # U/V/s not trained, biases, BN affine + running stats: bit-identical


def test_frozen_layers_get_no_weight_gradient_but_pass_data_gradient() -> None:
    model = _net()
    apply_svf(model, include="0", train=())
    apply_svf(model, include=["3", "8"], train=("s",))
    mark_only_svf_trainable(model)
    reference = _net()
    x, y = _batch()
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(xa), y).backward()
    nn.functional.cross_entropy(reference(xb), y).backward()
    assert model[0].u.grad is None and model[0].s.grad is None and model[0].v.grad is None
    assert model[3].u.grad is None and model[3].v.grad is None and model[3].s.grad is not None
    err = (xa.grad - xb.grad).abs().max() / xb.grad.abs().max()
    assert float(err) < 1e-5  # data gradient through merged and factorised layers equals the original


def test_factorised_gradient_matches_materialized_and_analytic() -> None:
    """dL/ds from the 3-op graph equals the re-materialised graph and diag(U^T dL/dW V) computed by hand."""
    model = _net()
    apply_svf(model, train=("s",))
    x, y = _batch()
    grads = {}
    set_svf_execution(model, "three_op")
    nn.functional.cross_entropy(model(x), y).backward()
    grads["three_op"] = [layer.s.grad.clone() for _, layer in svf_layers(model)]
    # The same network with W = U diag(s) V^T rebuilt inside the graph (one dense op per layer).
    model.zero_grad()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SVFLayer, "forward", lambda layer, h: layer._forward_dense(h, layer.merged_weight()))
        nn.functional.cross_entropy(model(x), y).backward()
    grads["materialize"] = [layer.s.grad.clone() for _, layer in svf_layers(model)]

    dense = _net()
    nn.functional.cross_entropy(dense(x), y).backward()
    for i, (name, layer) in enumerate(svf_layers(model)):
        torch.testing.assert_close(grads["three_op"][i], grads["materialize"][i], rtol=1e-4, atol=1e-7)
        d_w = dict(dense.named_modules())[name].weight.grad  # dL/dW of the original layer
        g, r = layer.groups, layer.group_rank
        u = layer.u.detach().reshape(g, -1, r)
        v = layer.v.detach().reshape(g, r, -1)
        analytic = torch.einsum("gor,goi,gri->gr", u, d_w.reshape(g, u.shape[1], -1), v).reshape(-1)
        torch.testing.assert_close(grads["three_op"][i], analytic, rtol=1e-4, atol=1e-7)


def test_exp_parametrization_at_init_equals_direct() -> None:
    direct, exp = _net(), _net()
    apply_svf(direct, train=("s",))
    apply_svf(exp, train=("s",), parametrization="exp")
    x, y = _batch()
    out_d, out_e = direct(x), exp(x)
    assert torch.equal(out_d, out_e)
    nn.functional.cross_entropy(out_d, y).backward()
    nn.functional.cross_entropy(out_e, y).backward()
    for (_, ld), (_, le) in zip(svf_layers(direct), svf_layers(exp)):
        # chain rule at s_delta = 0: dL/ds_delta = s0 * dL/ds
        torch.testing.assert_close(le.s_delta.grad, ld.s.grad * le.s0, rtol=1e-5, atol=1e-8)


def test_auto_training_step_never_materializes(monkeypatch: pytest.MonkeyPatch) -> None:
    model = copy.deepcopy(_net())
    apply_svf(model, train=("s",))

    def forbidden(self: SVFLayer, dtype: torch.dtype | None = None) -> Tensor:
        raise AssertionError("merged weight built during a training step")

    monkeypatch.setattr(SVFLayer, "merged_weight", forbidden)
    _sgd_steps(model, steps=1)
