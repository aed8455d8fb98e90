"""Stop a run on a non-finite loss without reading the loss back to the host every step.

Checking ``torch.isfinite(loss)`` in Python each step waits for every queued GPU kernel. Instead the
guard records, on the device, the first step whose loss or gradients are not finite, drops the
gradients of every such step before the optimizer sees them (so the weights stay finite), and reads
the record back only every ``check_every`` optimizer steps, before every checkpoint save and at the
end of each epoch and of the fit. ``check_every=1`` checks each step before its optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

# Reduces a tensor over processes (sum); identity in a single process.
Reduce = Callable[[Tensor], Tensor]
# Lightning precisions that train with a grad scaler
FP16_PRECISIONS = frozenset({"16-mixed", "16"})


class NonFiniteGuard:
    """Device-side record of non-finite training steps, checked on the host every ``check_every`` steps.

    Under DDP the gradients are all-reduced before the optimizer step, so a non-finite loss on one
    process makes every process drop the same step; ``check`` sums the counts over processes so that all
    of them stop together.
    """

    def __init__(self, check_every: int, what: str = "training loss") -> None:
        if int(check_every) < 1:
            raise ValueError(f"optim.nonfinite_check_every must be >= 1, got {check_every}")
        self.check_every = int(check_every)
        self.what = what
        self._device: torch.device | None = None
        self._state: dict[str, Tensor] = {}
        self._episodes: Tensor | None = None

    # ------------------------------------------------------------------ device-side record
    def _ensure(self, device: torch.device) -> dict[str, Tensor]:
        if self._device != device:
            self._device = device
            self._state = {
                "count": torch.zeros((), dtype=torch.long, device=device),
                "step": torch.full((), -1, dtype=torch.long, device=device),
                "epoch": torch.full((), -1, dtype=torch.long, device=device),
                "batch": torch.full((), -1, dtype=torch.long, device=device),
                "loss": torch.zeros((), dtype=torch.float32, device=device),
                "pending": torch.zeros((), dtype=torch.bool, device=device),
            }
            self._episodes = None
        return self._state

    def _remember(self, key: str, value: int, first: Tensor) -> None:
        # a Python scalar in torch.where is a kernel argument: no host-to-device copy, no sync
        self._state[key] = torch.where(first, value, self._state[key])

    def observe_loss(
        self, loss: Tensor, *, step: int, epoch: int, batch_idx: int, episodes: Tensor | None = None
    ) -> None:
        """Record the loss of one training batch (no host sync)."""
        state = self._ensure(loss.device)
        bad = ~torch.isfinite(loss.detach())
        first = bad & (state["step"] < 0)
        self._remember("step", step, first)
        self._remember("epoch", epoch, first)
        self._remember("batch", batch_idx, first)
        state["loss"] = torch.where(first, loss.detach().float(), state["loss"])
        if episodes is not None:
            self._remember_episodes(episodes.detach().long().flatten(), first)
        state["pending"] = state["pending"] | bad

    def _remember_episodes(self, episodes: Tensor, first: Tensor) -> None:
        if self._episodes is None:
            self._episodes = torch.full_like(episodes, -1)
        stored = self._episodes
        if episodes.numel() < stored.numel():  # a short last batch: pad with -1
            episodes = torch.cat([episodes, episodes.new_full((stored.numel() - episodes.numel(),), -1)])
        self._episodes = torch.where(first, episodes[: stored.numel()], stored)

    def drop_bad_gradients(
        self, params: Iterable[Tensor], *, step: int, epoch: int, inspect_gradients: bool = True
    ) -> None:
        """Zero every gradient of a step whose loss or gradients are not finite (no host sync).

        Momentum and weight decay still move the weights on such a step; both are finite.
        ``inspect_gradients=False`` looks at the loss only: under fp16 mixed precision an overflowing
        gradient is the grad scaler's to skip, not an error.
        """
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        state = self._ensure(grads[0].device)
        found = torch.zeros(1, dtype=torch.float32, device=grads[0].device)
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        one = torch.ones(1, dtype=torch.float32, device=grads[0].device)
        for same in by_dtype.values() if inspect_gradients else ():
            # fused check over all gradients (the AMP grad scaler's kernel, with scale 1)
            torch._amp_foreach_non_finite_check_and_unscale_(same, found, one)
        bad = (found.view(()) > 0) | state["pending"]
        first = bad & (state["step"] < 0)
        self._remember("step", step, first)
        self._remember("epoch", epoch, first)
        state["loss"] = torch.where(first, float("nan"), state["loss"])
        for g in grads:
            g.masked_fill_(bad, 0)
        state["count"] = state["count"] + bad.long()
        state["pending"] = torch.zeros_like(state["pending"])

    # ------------------------------------------------------------------ host-side check
    def due(self, global_step: int) -> bool:
        return global_step > 0 and global_step % self.check_every == 0

    def check(self, reduce: Reduce | None = None) -> None:
        """Read the record back (one host sync) and raise ``FloatingPointError`` if a step was bad."""
        if not self._state:
            return
        state = self._state
        local = state["count"] + state["pending"].long()
        total = reduce(local.clone()) if reduce is not None else local
        if int(total) == 0:
            return
        raise FloatingPointError(self.message(int(local), int(total)))

    def message(self, local: int, total: int) -> str:
        state = self._state
        if local == 0:
            return (
                f"non-finite {self.what} on another process ({total} step(s) over all processes); "
                "the last good checkpoint is kept. Lower optim.lr or check the data of those episodes."
            )
        step, epoch, batch = (int(state[k]) for k in ("step", "epoch", "batch"))
        loss = float(state["loss"])
        where = f"epoch {epoch}, batch {batch}" if batch >= 0 else f"epoch {epoch}"
        if self._episodes is not None and batch >= 0:
            episodes = [e for e in self._episodes.tolist() if e >= 0]
            where += f", episodes {episodes}"
        kind = f"{self.what} {loss}" if batch >= 0 else f"gradients of the {self.what}"
        return (
            f"non-finite {kind} at global step {step} ({where}); {local} step(s) dropped their "
            f"gradients, so the weights stay finite, and the last good checkpoint is kept. Lower "
            "optim.lr or check the data of these episodes (optim.nonfinite_check_every=1 stops at the "
            "step itself)."
        )


class GuardedTraining:
    """LightningModule hooks that run a :class:`NonFiniteGuard` held as ``self.nonfinite``.

    Mix in before ``pl.LightningModule``; ``training_step`` calls ``self.nonfinite.observe_loss`` (and
    ``self.check_finite()`` when ``check_every == 1``). A subclass's ``on_save_checkpoint`` calls super.
    """

    nonfinite: NonFiniteGuard
    trainer: Any
    global_step: int
    current_epoch: int

    def check_finite(self) -> None:
        reduce = None
        if getattr(self, "_trainer", None) is not None and self.trainer.world_size > 1:
            reduce = lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")
        self.nonfinite.check(reduce)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        scaled = str(self.trainer.precision) in FP16_PRECISIONS  # the grad scaler skips overflow steps
        self.nonfinite.drop_bad_gradients(
            params, step=self.global_step, epoch=self.current_epoch, inspect_gradients=not scaled
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.nonfinite.due(self.global_step):
            self.check_finite()

    def on_train_epoch_end(self) -> None:
        self.check_finite()

    def on_train_end(self) -> None:
        self.check_finite()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # never write weights of a run that passed a non-finite step unnoticed
        self.check_finite()
