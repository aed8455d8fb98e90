"""No per-step host sync in svfseg's training and evaluation hot paths.

A host sync is reading a tensor back as a Python value (``.item()``, ``.tolist()``, ``bool()``, ``int()``,
``float()``, ``.cpu()``, ``.numpy()``, ``torch.equal``): on a GPU each one waits for every queued
kernel. The test counts such calls from any code, svfseg's and Lightning's (the data pipeline excluded:
it works on host tensors before the transfer), during two short runs that differ only in their number
of training and validation batches. The difference is the per-step cost: none per training step and
none per validation batch. Lightning's own reads every ``log_every_n_steps`` and svfseg's non-finite
check every ``optim.nonfinite_check_every`` steps are not per step; both intervals exceed the runs here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from svfseg.tasks.train import train
from tests.helpers.hydra import tiny_train_config

SRC = str(Path(__file__).resolve().parents[2] / "src" / "svfseg")
TORCH_DATA = str(Path(torch.utils.data.__file__).parent)
EXCLUDED = (f"{SRC}/data/", TORCH_DATA)
EPOCH_LEVEL = frozenset({"compute"})  # torchmetrics' compute runs once per epoch, not per step
TENSOR_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")


@contextmanager
def count_host_syncs() -> Iterator[dict[str, int]]:
    """Count tensor -> Python conversions by their immediate caller (``{"file:line": n}``)."""
    counts: dict[str, int] = {}

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            frame = sys._getframe(1)
            name = frame.f_code.co_filename
            if not name.startswith(EXCLUDED) and frame.f_code.co_name not in EPOCH_LEVEL:
                where = f"{name}:{frame.f_lineno}"
                counts[where] = counts.get(where, 0) + 1
            return original(*args, **kwargs)

        return counted

    saved = {m: getattr(torch.Tensor, m) for m in TENSOR_METHODS}
    equal = torch.equal
    try:
        for m, original in saved.items():
            setattr(torch.Tensor, m, wrap(original))
        torch.equal = wrap(equal)
        yield counts
    finally:
        for m, original in saved.items():
            setattr(torch.Tensor, m, original)
        torch.equal = equal


def _run(
    synthetic_pascal: Any, out: Path, finetune: str, train_batches: int, val_batches: int
) -> dict[str, int]:
    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(
        root,
        out,
        min_pixels=min_pixels,
        extra=[
            f"finetune={finetune}",
            "trainer.max_epochs=1",
            f"trainer.limit_train_batches={train_batches}",
            f"+trainer.limit_val_batches={val_batches}",
            "test_after_fit=false",
        ],
    )
    with count_host_syncs() as counts:
        train(cfg)
    return counts


@pytest.mark.parametrize("finetune", ["svf", "freeze"])
def test_no_sync_per_training_step_or_validation_batch(
    synthetic_pascal: Any, tmp_path: Path, finetune: str
) -> None:
    short = _run(synthetic_pascal, tmp_path / "short", finetune, train_batches=2, val_batches=1)
    long = _run(synthetic_pascal, tmp_path / "long", finetune, train_batches=4, val_batches=3)
    per_step = {k: long.get(k, 0) - short.get(k, 0) for k in set(short) | set(long)}
    per_step = {k: v for k, v in per_step.items() if v}
    # 2 more training steps, 2 x 2 more validation batches (novel episodes + train-episode curve)
    assert per_step == {}, per_step
    # the counter does see syncs: the epoch-end metric logging reads values back in both runs
    assert sum(short.values()) > 0
