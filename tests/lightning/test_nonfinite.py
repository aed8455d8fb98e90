"""NonFiniteGuard: a bad step is recorded on the device, its gradients dropped, and reported at the check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from svfseg.lightning.nonfinite import NonFiniteGuard
from svfseg.lightning.optim import OptimConfig

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # gpu_check.sh runs the CUDA cases


def _train(
    guard: NonFiniteGuard | None,
    poison: dict[int, str],
    steps: int = 6,
    inspect_gradients: bool = True,
    device: str = "cpu",
) -> nn.Linear:
    """SGD with momentum on a linear model; ``poison[step]`` is "input" (NaN loss) or "grad" (inf grad)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    data = torch.randn(steps, 2, 4).to(device)
    for step in range(steps):
        x = data[step].clone()
        if poison.get(step) == "input":
            x[0, 0] = float("nan")
        loss = model(x).square().mean()
        if guard is not None:
            guard.observe_loss(
                loss,
                step=step,
                epoch=0,
                batch_idx=step,
                episodes=torch.tensor([2 * step, 2 * step + 1], device=device),
            )
        opt.zero_grad()
        loss.backward()
        if poison.get(step) == "grad":
            model.bias.grad[1] = float("inf")
        if guard is not None:
            guard.drop_bad_gradients(
                model.parameters(), step=step, epoch=0, inspect_gradients=inspect_gradients
            )
        opt.step()
    return model


@pytest.mark.parametrize("device", DEVICES)
def test_good_steps_train_exactly_as_without_the_guard(device: str) -> None:
    guard = NonFiniteGuard(check_every=3)
    guarded, plain = _train(guard, {}, device=device), _train(None, {}, device=device)
    for a, b in zip(guarded.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    guard.check()  # nothing to report


@pytest.mark.parametrize("device", DEVICES)
def test_nan_loss_step_drops_its_gradients_and_the_check_names_it(device: str) -> None:
    guard = NonFiniteGuard(check_every=100)
    model = _train(guard, {2: "input"}, device=device)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(FloatingPointError) as info:
        guard.check()
    message = str(info.value)
    assert message.startswith(
        "non-finite training loss nan at global step 2 (epoch 0, batch 2, episodes [4, 5]); "
    )
    assert "1 step(s) dropped their gradients" in message and "last good checkpoint is kept" in message
    assert "optim.nonfinite_check_every=1" in message


def test_first_bad_step_is_kept_and_every_bad_step_is_counted() -> None:
    guard = NonFiniteGuard(check_every=100)
    _train(guard, {1: "input", 4: "input"})
    with pytest.raises(
        FloatingPointError, match=r"at global step 1 \(epoch 0, batch 1, episodes \[2, 3\]\); 2 step"
    ):
        guard.check()


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_gradient_with_a_finite_loss_is_caught(device: str) -> None:
    guard = NonFiniteGuard(check_every=100)
    model = _train(guard, {3: "grad"}, device=device)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(
        FloatingPointError, match=r"non-finite gradients of the training loss at global step 3 \(epoch 0\)"
    ):
        guard.check()


def test_under_a_grad_scaler_only_the_loss_is_checked() -> None:
    # fp16 mixed precision: an overflowing gradient is the scaler's to skip; a NaN loss still stops
    guard = NonFiniteGuard(check_every=100)
    _train(guard, {3: "grad"}, steps=4, inspect_gradients=False)  # last step: no later loss sees it
    guard.check()
    _train(guard, {2: "input"}, inspect_gradients=False)
    with pytest.raises(FloatingPointError, match="training loss nan at global step 2"):
        guard.check()


def test_a_bad_step_on_another_process_stops_this_one_too() -> None:
    guard = NonFiniteGuard(check_every=100)
    _train(guard, {})
    with pytest.raises(FloatingPointError, match=r"on another process \(1 step\(s\) over all processes\)"):
        guard.check(reduce=lambda local: local + 1)  # the other rank's count, as an all-reduce would give


def test_recording_reads_nothing_back_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = NonFiniteGuard(check_every=100)
    calls: list[str] = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *a: object, _o=original, _n=name, **k: object) -> object:
            calls.append(_n)
            return _o(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    _train(guard, {2: "input"})
    assert calls == []


def test_due_every_n_optimizer_steps_and_config_validation() -> None:
    guard = NonFiniteGuard(check_every=4)
    assert [s for s in range(13) if guard.due(s)] == [4, 8, 12]
    with pytest.raises(ValueError, match=r"optim\.nonfinite_check_every must be >= 1, got 0"):
        NonFiniteGuard(check_every=0)
    with pytest.raises(ValueError, match=r"optim\.nonfinite_check_every must be >= 1, got 0"):
        OptimConfig(nonfinite_check_every=0)
