"""Warm start (``init_head=<checkpoint or run folder>``): a run's head starts from another run's trained head.

Why: the few-shot head is trained from random weights, and on a short budget most steps go to moving it
off "all background". Training the head once with the backbone frozen and starting every strategy from
that same head compares what the strategies do to the backbone, which is what SVF is about (the real-photo
demo does this; docs/real-data.md).

Every tensor outside ``backbone.`` comes from the checkpoint (strictly: same names, same shapes). The
backbone stays this run's pretrained one, so the checkpoint's backbone must be bitwise equal to it: a head
is only meaningful on the features it was trained on. The checkpoint must be of the same method, backbone,
dataset, fold and shot (a head trained on another fold has seen this fold's test classes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from svfseg.lightning.checkpoint_record import CheckpointRecord
from svfseg.lightning.checkpointing import load_checkpoint_dict, resolve_checkpoint
from svfseg.methods.base import FewShotModel
from svfseg.run_spec import RunSpec, check_identity

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone."
MODULE_PREFIX = "model."
HEAD_SOURCE_FIX = "init_head must name a finetune=freeze run of this method, backbone, dataset, fold and shot"


class WarmStartError(ValueError):
    """``init_head`` names a checkpoint whose head cannot start this run."""


def load_head(model: FewShotModel, path: str | Path, spec: RunSpec) -> Path:
    """Copy every non-backbone tensor of the checkpoint at ``path`` into ``model``; returns the file read."""
    file = resolve_checkpoint(path)
    checkpoint = load_checkpoint_dict(file)
    fix = HEAD_SOURCE_FIX
    check_identity(
        CheckpointRecord.read(checkpoint, source=f"init_head={file}").run.identity(),
        spec.identity(),
        source=f"init_head={file}",
        target="this run is",
        fix=fix,
    )
    source = {
        k[len(MODULE_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODULE_PREFIX)
    }
    target = model.state_dict()
    for key, value in target.items():
        if key not in source:
            raise WarmStartError(f"init_head={file} has no tensor {key!r} of this model; {fix}")
        if source[key].shape != value.shape:
            raise WarmStartError(
                f"init_head={file}: {key!r} has shape {tuple(source[key].shape)}, this model "
                f"{tuple(value.shape)}; {fix}"
            )
        if key.startswith(BACKBONE_PREFIX) and not torch.equal(source[key], value):
            raise WarmStartError(
                f"init_head={file}: backbone tensor {key!r} differs from this run's pretrained backbone, so "
                f"its head was trained on other features; {fix} (and the same backbone.pretrained)"
            )
    extra = sorted(set(source) - set(target))
    if extra:
        raise WarmStartError(
            f"init_head={file} holds tensors this model lacks ({extra[:3]}{' ...' if len(extra) > 3 else ''}; "
            f"a converted backbone, e.g. finetune=svf?); {fix}"
        )
    head = {k: v for k, v in source.items() if not k.startswith(BACKBONE_PREFIX)}
    model.load_state_dict({**target, **head}, strict=True)
    log.info("init_head: %d head tensors from %s", len(head), file)
    return file
