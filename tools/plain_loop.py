"""Train a run's model in a plain PyTorch loop, without Lightning, and evaluate it at chosen steps.

Why: when a run does not learn, this separates the training loop from the model and the data. It builds
the run exactly as ``train.py`` does (the same composed config, datamodule, model, fine-tune strategy,
optimizer and per-step lr schedule, seeded the same way) and then trains with a bare ``for`` loop: no
Trainer, no callbacks, no precision plugin. On the tiny profile its losses equal ``train.py``'s logged
losses step for step (``tests/project/test_plain_loop.py``); on the CCP demo's settings it ends where
``train.py`` ends (docs/real-data.md). Usage::

    python tools/plain_loop.py --steps 200 --eval-at 62 124 186 200 -- dataset=folder dataset.root=... ...

Everything after ``--`` is a ``train.py`` override; the lr schedule spans ``--steps`` (as ``train.py``'s
with ``trainer.max_steps=STEPS``). One JSON line per training step (``step``, ``loss``, ``lr``) and per
evaluation (``val`` and ``train_episodes`` mIoU in %, and the share of pixels predicted as foreground).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from svfseg.compose import compose_train_config
from svfseg.config_checks import check_train_config
from svfseg.data.samplers import step_seed
from svfseg.lightning.module import FewShotSegModule
from svfseg.lightning.optim import build_optimizer, build_scheduler
from svfseg.metrics import FewShotIoU
from svfseg.tasks.builders import build_datamodule, build_module
from svfseg.tasks.resolve import TrainRun


def evaluate(module: FewShotSegModule, loader: Any, num_classes: int) -> dict[str, float]:
    """mIoU (%) of the episodes of ``loader`` and the share of their pixels predicted as foreground."""
    metric = FewShotIoU(num_classes, validate_args=False)  # as the module's own evaluation metrics
    foreground, pixels = 0, 0
    module.eval()
    with torch.no_grad():
        for batch in loader:
            logits = module(batch, with_target=False).logits
            predicted = logits.argmax(1)
            foreground += int((predicted == 1).sum())
            pixels += predicted.numel()
            metric.update_from_logits(logits, batch["label_ori"], batch["ori_hw"], batch["class_idx"])
    module.train()
    return {"miou": round(100 * float(metric.compute()["miou"]), 4), "predicted_fg": foreground / pixels}


def training_batches(datamodule: Any, limit: int | float | None) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """``(epoch, batch index, batch)`` for ever, each epoch in the sampler's order for that epoch and cut
    at ``trainer.limit_train_batches`` (a count, or a fraction of the loader) as Lightning cuts it."""
    loader = datamodule.train_dataloader()
    per_epoch = len(loader)
    if isinstance(limit, float) and limit <= 1.0:
        per_epoch = int(per_epoch * limit)
    elif limit is not None:
        per_epoch = min(per_epoch, int(limit))
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)  # as Lightning does before each training epoch
        for index, batch in zip(range(per_epoch), loader):
            yield epoch, index, batch
        epoch += 1


def plain_loop(overrides: Sequence[str], steps: int, eval_at: Sequence[int]) -> Iterator[dict[str, Any]]:
    """Train ``steps`` steps of the run ``overrides`` describe; yields one record per step and evaluation."""
    cfg = compose_train_config(list(overrides))
    run = TrainRun.from_config(cfg, check_train_config(cfg))  # the checks' spec, not a second one
    pl.seed_everything(run.seed, workers=True)  # then the datamodule and the model, in train.py's order
    datamodule = build_datamodule(run)
    module = build_module(run)
    module.apply_finetune()  # what FinetuneCallback does at fit start
    assert module.param_groups is not None
    optimizer = build_optimizer(module.param_groups, module.optim_cfg)
    scheduler = build_scheduler(optimizer, module.optim_cfg, steps)
    datamodule.setup("fit")
    loaders = datamodule.val_dataloader()
    val, train_episodes = loaders if isinstance(loaders, list) else (loaders, None)
    module.train()
    batches = training_batches(datamodule, cfg.trainer.get("limit_train_batches"))
    for step, (epoch, index, batch) in zip(range(1, steps + 1), batches):
        torch.manual_seed(step_seed(run.seed, epoch, index, 0))  # StepSeed: dropout masks of this batch
        lr = optimizer.param_groups[0]["lr"]
        loss = module(batch).loss
        assert loss is not None
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        yield {"step": step - 1, "epoch": epoch, "loss": float(loss), "lr": lr}
        if step in eval_at:
            record: dict[str, Any] = {
                "after_steps": step,
                "val": evaluate(module, val, module.num_eval_classes),
            }
            if train_episodes is not None:
                record["train_episodes"] = evaluate(
                    module, train_episodes, len(module.spec.fold.base_classes)
                )
            yield record


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    overrides = args[args.index("--") + 1 :] if "--" in args else []
    own = args[: args.index("--")] if "--" in args else args
    parser = argparse.ArgumentParser(prog="python tools/plain_loop.py", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, required=True, help="training steps")
    parser.add_argument("--eval-at", type=int, nargs="*", default=[], help="evaluate after these steps")
    parsed = parser.parse_args(own)
    for record in plain_loop(overrides, parsed.steps, set(parsed.eval_at)):
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
