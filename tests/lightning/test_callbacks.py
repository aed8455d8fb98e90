"""FinetuneCallback says why modules stay in eval mode instead of Lightning's generic warning, and only for
the modules the strategy keeps there: a module left in eval mode by mistake still warns."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from torch import nn

from svfseg.lightning.callbacks import modules_in_eval_when_training
from svfseg.tasks.builders import build_module
from svfseg.tasks.resolve import TrainRun
from svfseg.tasks.train import train
from tests.helpers.hydra import tiny_train_config

STEPS = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "test_after_fit=false"]
EVAL_MODE = "module(s) in eval mode at the start of training"


class HeadLayerLeftInEval(pl.Callback):
    """A method bug: one head layer left in eval mode when training starts (after FinetuneCallback)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        layers = pl_module.model.named_modules()
        head = next(m for n, m in layers if n and not n.startswith("backbone") and not list(m.children()))
        head.eval()


def _train_and_catch(synthetic_pascal: Any, out: Path, extra: list[str]) -> list[str]:
    root, min_pixels = synthetic_pascal
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tiny_train_config(root, out, min_pixels=min_pixels, extra=[*STEPS, *extra]))
    return [str(w.message) for w in caught if EVAL_MODE in str(w.message)]


def _batchnorm_count(synthetic_pascal: Any, out: Path) -> int:
    root, min_pixels = synthetic_pascal
    module = build_module(TrainRun.from_config(tiny_train_config(root, out, min_pixels=min_pixels)))
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.model.backbone.modules())


def test_frozen_bn_is_said_once_and_not_warned(synthetic_pascal, tmp_path, caplog) -> None:
    n_bn = _batchnorm_count(synthetic_pascal, tmp_path / "count")
    assert n_bn == 55  # deep stem 3 + 16 bottlenecks x 3 + 4 downsample BN (ResNet-50)
    with caplog.at_level(logging.INFO, logger="svfseg.lightning.callbacks"):
        caught = _train_and_catch(synthetic_pascal, tmp_path / "svf", ["finetune=svf"])
    assert caught == []
    assert (
        f"{n_bn} modules stay in eval mode while training, by design (the backbone's frozen BN)"
        in caplog.text
    )


def test_a_module_left_in_eval_by_mistake_still_warns(synthetic_pascal, tmp_path) -> None:
    n_bn = _batchnorm_count(synthetic_pascal, tmp_path / "count")
    oops = f"+callbacks.oops._target_=tests.lightning.test_callbacks.{HeadLayerLeftInEval.__name__}"
    caught = _train_and_catch(synthetic_pascal, tmp_path / "oops", ["finetune=svf", oops])
    assert caught and caught[0].startswith(f"Found {n_bn + 1} module(s) in eval mode")


@pytest.mark.parametrize("mode", [True, False])
def test_counting_restores_every_mode(synthetic_pascal, tmp_path, mode: bool) -> None:
    root, min_pixels = synthetic_pascal
    module = build_module(TrainRun.from_config(tiny_train_config(root, tmp_path, min_pixels=min_pixels)))
    module.apply_finetune()
    module.train(mode)
    before = [m.training for m in module.modules()]
    assert modules_in_eval_when_training(module) == 55
    assert [m.training for m in module.modules()] == before


def _warn_from_one_place() -> None:
    warnings.warn("svfseg test: a warning Python shows once per place", UserWarning, stacklevel=1)


def test_the_filter_is_added_once(synthetic_pascal, tmp_path) -> None:
    """Each change of the warning filters makes Python show every "once" warning again, so a second fit in
    the same process (a sweep, the demo) must not add the filter again."""
    from types import SimpleNamespace

    from svfseg.lightning.callbacks import FinetuneCallback

    root, min_pixels = synthetic_pascal
    module = build_module(TrainRun.from_config(tiny_train_config(root, tmp_path, min_pixels=min_pixels)))
    module.apply_finetune()
    callback = FinetuneCallback(module.spec.strategy)
    trainer = SimpleNamespace(is_global_zero=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # once per place
        callback.on_fit_start(trainer, module)
        _warn_from_one_place()
        callback.on_fit_start(trainer, module)
        _warn_from_one_place()
        lightning_says = "Found 55 module(s) in eval mode at the start of training. This may lead to ..."
        ours = [
            f
            for f in warnings.filters
            if f[0] == "ignore" and f[1] is not None and f[1].match(lightning_says)
        ]
    assert len(ours) == 1
    assert sum("shows once per place" in str(w.message) for w in caught) == 1
