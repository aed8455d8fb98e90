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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class HeadSource:
    """The checkpoint ``init_head`` names, read and held to the run's identity once, at start.

    ``tensors`` are the checkpoint's model tensors (``model.`` prefix removed; memory-mapped, so holding
    them until the model is built costs no copy). :func:`apply_head` copies them into the built model.
    """

    file: Path
    tensors: dict[str, torch.Tensor]


def read_head(path: str | Path, spec: RunSpec) -> HeadSource:
    """Read the checkpoint ``path`` names and check that it is of ``spec``'s method, backbone, dataset,
    fold and shot (:class:`~svfseg.run_spec.RunMismatchError` otherwise)."""
    try:
        file = resolve_checkpoint(path)
    except (FileNotFoundError, ValueError) as err:  # its messages say ckpt_path=; this value is init_head=
        raise type(err)(str(err).replace("ckpt_path=", "init_head=")) from err
    checkpoint = load_checkpoint_dict(file)
    check_identity(
        CheckpointRecord.read(checkpoint, source=f"init_head={file}").run.identity(),
        spec.identity(),
        source=f"init_head={file}",
        target="this run is",
        fix=HEAD_SOURCE_FIX,
    )
    tensors = {
        k[len(MODULE_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODULE_PREFIX)
    }
    return HeadSource(file=file, tensors=tensors)


def apply_head(model: FewShotModel, head: HeadSource) -> None:
    """Copy every non-backbone tensor of ``head`` into ``model`` (strictly: same names, same shapes), after
    checking that its backbone tensors equal ``model``'s."""
    file, source, fix = head.file, head.tensors, HEAD_SOURCE_FIX
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
    head_tensors = {k: v for k, v in source.items() if not k.startswith(BACKBONE_PREFIX)}
    model.load_state_dict({**target, **head_tensors}, strict=True)
    log.info("init_head: %d head tensors from %s", len(head_tensors), file)


def load_head(model: FewShotModel, path: str | Path, spec: RunSpec) -> Path:
    """:func:`read_head` then :func:`apply_head` (a notebook's one call); returns the file read."""
    head = read_head(path, spec)
    apply_head(model, head)
    return head.file
