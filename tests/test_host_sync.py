"""No per-step host sync in svfseg's training and evaluation hot paths.

A host sync is reading a tensor back as a Python value (``.item()``, ``.tolist()``, ``bool()``, ``int()``,
``float()``, ``.cpu()``, ``.numpy()``, ``torch.equal``): on a GPU each one waits for every queued
kernel. The test counts such calls made *from svfseg's own code* (the data pipeline excluded: it works
on host tensors before the transfer) during two short runs that differ only in their number of training
and validation batches. The difference is the per-step cost: exactly one sync per training step (the
non-finite loss check, which keeps the weights finite) and none per validation batch.
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
from tests.hydra_helpers import tiny_train_config

SRC = str(Path(__file__).resolve().parents[1] / "src" / "svfseg")
EXCLUDED = (f"{SRC}/data/",)
EPOCH_LEVEL = frozenset({"compute"})  # torchmetrics' compute runs once per epoch, not per step
TENSOR_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")


@contextmanager
def count_host_syncs() -> Iterator[dict[str, int]]:
    """Count tensor -> Python conversions whose immediate caller is svfseg code (``{"file:line": n}``)."""
    counts: dict[str, int] = {}

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            frame = sys._getframe(1)
            name = frame.f_code.co_filename
            if (
                name.startswith(SRC)
                and not name.startswith(EXCLUDED)
                and frame.f_code.co_name not in EPOCH_LEVEL
            ):
                where = f"{name.removeprefix(SRC + '/')}:{frame.f_lineno}"
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
def test_one_sync_per_training_step_and_none_per_validation_batch(
    synthetic_pascal: Any, tmp_path: Path, finetune: str
) -> None:
    short = _run(synthetic_pascal, tmp_path / "short", finetune, train_batches=2, val_batches=1)
    long = _run(synthetic_pascal, tmp_path / "long", finetune, train_batches=4, val_batches=3)
    per_step = {k: long.get(k, 0) - short.get(k, 0) for k in set(short) | set(long)}
    per_step = {k: v for k, v in per_step.items() if v}
    # 2 more training steps, 2 x 2 more validation batches (novel episodes + train-episode curve)
    assert len(per_step) == 1 and list(per_step.values()) == [2], per_step
    (where,) = per_step
    assert where.startswith("lightning/module.py:"), where  # the non-finite loss check
