"""Convert a BAM-released stage-1 PSPNet checkpoint into svfseg's base-learner file.

The SVF paper's BAM rows start from "the initialization weights provided by [BAM's] author": one
PSPNet per dataset, fold and backbone, published as ``initmodel/PSPNet/{pascal|coco}/split{k}/
{resnet50|vgg}/best.pth``. Those files use BAM's module names; this module renames every key once to
svfseg's ``PSPNet`` layout, checks that every key is used and every shape fits, and writes the file
``method.base_learner`` reads (with the dataset / fold / backbone record that stage 2 checks).

BAM's names (its ``model/PSPNet.py``): the ResNet stem is one ``nn.Sequential`` ``layer0`` holding
conv1, bn1, relu, conv2, bn2, relu, conv3, bn3, relu, maxpool (so parameters at indices 0, 1, 3, 4, 6,
7); ``layer1..4`` are the ResNet stages; VGG's ``layer0..4`` are slices of ``vgg16_bn``'s ``features``
(``[0:7]``, ``[7:14]``, ``[14:24]``, ``[24:34]``, ``[34:43]``, indices restarting at 0 in each slice);
``ppm`` and ``cls`` are the pyramid pooling module and the classifier.

What a released ``best.pth`` holds besides those names:

* BAM registers the backbone a second time as ``encoder = nn.Sequential(layer0, ..., layer4)``, so every
  backbone tensor is also stored as ``encoder.<i>.*`` (the same module as ``layer<i>.*``). Each alias is
  checked bitwise equal (dtype, shape, values) to its ``layer<i>`` twin and then dropped; an alias that
  differs or has no twin is refused (the file was edited or is not a BAM PSPNet).
* DDP training adds a ``module.`` prefix, and the training script wraps the weights as
  ``{'epoch', 'state_dict', 'optimizer'}``; only ``state_dict`` is read (``epoch`` goes to the record).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from svfseg.data.fold import FoldSpec
from svfseg.files import read_tensor_file, sha256_file
from svfseg.messages import preview
from svfseg.methods.pspnet import (
    BaseLearnerCheckpointError,
    PSPNet,
    backbone_shell,
    load_exact_state,
    save_base_learner,
)

RESNET_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}
BAM_BACKBONE_DIRS = {"resnet50": "resnet50", "resnet101": "resnet101", "vgg16_bn": "vgg"}
_LAYOUT = re.compile(r"(?P<dataset>pascal|coco)/split(?P<fold>\d)/(?P<backbone>[a-z0-9_]+)/[^/]+$")
# BAM's second name of a backbone tensor: ``encoder.<i>.rest`` is ``layer<i>.rest``.
_ALIAS = re.compile(r"encoder\.(?P<index>\d+)\.(?P<rest>.+)")
_MAX_LISTED = 20


class BAMImportError(ValueError):
    """A BAM checkpoint that cannot become the requested base learner; the message names the fix."""


def default_output(weights_dir: str | Path, dataset: str, fold: int, backbone: str) -> Path:
    """Where ``conf/method/bam.yaml``'s ``method.base_learner`` looks for this base learner."""
    return Path(weights_dir) / "base_learner" / dataset / f"fold{fold}" / backbone / "pspnet.pt"


def read_bam_checkpoint(path: Path) -> tuple[dict[str, Tensor], int | None]:
    """The tensors of a BAM checkpoint, ``module.`` removed, and the wrapper's ``epoch`` (None if absent).

    Accepts BAM's training wrapper ``{'epoch', 'state_dict', 'optimizer'}`` (anything beside
    ``state_dict`` is ignored) or a bare state dict.
    """
    if not path.is_file():
        raise BAMImportError(f"{path} does not exist: give the path of BAM's best.pth")
    ckpt = read_tensor_file(
        path, error=BAMImportError, what="a PyTorch checkpoint", fix="download BAM's best.pth again"
    )
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise BAMImportError(
            f"{path} holds no state dict of tensors (expected BAM's {{'epoch', 'state_dict', 'optimizer'}} "
            "or a bare state dict)"
        )
    epoch = ckpt.get("epoch") if state is not ckpt else None
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name in out:
            raise BAMImportError(
                f"{path} holds {name} both with and without the 'module.' prefix; a BAM checkpoint has one "
                "or the other, so it is not clear which copy to use"
            )
        out[name] = value
    return out, epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def read_bam_state(path: Path) -> dict[str, Tensor]:
    """The tensors of a BAM checkpoint (``state_dict`` entry or a bare state dict), ``module.`` removed."""
    return read_bam_checkpoint(path)[0]


def drop_encoder_aliases(state: Mapping[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Drop BAM's ``encoder.<i>.*`` aliases after checking each equals its ``layer<i>.*`` twin bitwise.

    BAM's PSPNet holds ``encoder = nn.Sequential(layer0, ..., layer4)``, the very modules registered as
    ``layer0..4``; its state dict therefore stores each backbone tensor twice. Anything but an exact copy
    means the file was edited or is not BAM's, and is refused (naming the keys) rather than guessed.
    """
    orphans: list[str] = []
    differing: list[str] = []
    for key, value in state.items():
        match = _ALIAS.fullmatch(key)
        if match is None:
            continue
        twin = f"layer{match['index']}.{match['rest']}"
        other = state.get(twin)
        if other is None:
            orphans.append(key)
        elif other.dtype != value.dtype or other.shape != value.shape:
            differing.append(
                f"{key} ({value.dtype}, {tuple(value.shape)}) vs {twin} ({other.dtype}, {tuple(other.shape)})"
            )
        elif not torch.equal(other, value):
            differing.append(f"{key} vs {twin} (values differ)")
    if orphans:
        raise BAMImportError(
            f"{path}: encoder aliases without a layer twin: [{preview(sorted(orphans), _MAX_LISTED)}]. BAM's PSPNet stores its "
            "backbone both as layer0..4 and as encoder = Sequential(layer0..layer4), so every encoder.<i>.* "
            "tensor must come with the same layer<i>.* tensor; these do not, so the file is not a BAM PSPNet "
            "state dict (or was edited)"
        )
    if differing:
        raise BAMImportError(
            f"{path}: encoder aliases differ from their layer twins: [{preview(sorted(differing), _MAX_LISTED)}]. In BAM's PSPNet "
            "encoder.<i> and layer<i> are one module, so both names must hold identical tensors; a difference "
            "means the file was edited or corrupted, and which copy is right cannot be told"
        )
    return {k: v for k, v in state.items() if _ALIAS.fullmatch(k) is None}


def rename_key(key: str, backbone: str) -> str:
    """BAM's name of a PSPNet tensor -> svfseg's; unknown names are returned unchanged (and then refused)."""
    head, _, rest = key.partition(".")
    if head in ("ppm", "cls"):
        return key
    if re.fullmatch(r"layer[0-4]", head):
        if head == "layer0" and backbone != "vgg16_bn":
            index, _, leaf = rest.partition(".")
            if index in RESNET_STEM:
                return f"backbone.layer0.{RESNET_STEM[index]}.{leaf}"
        return f"backbone.{key}"
    return key


def check_source_path(path: Path, split: FoldSpec, backbone: str) -> str | None:
    """Refuse a file whose BAM folder names another dataset, fold or backbone; None when the name says nothing."""
    match = _LAYOUT.search(path.resolve().as_posix())
    if match is None:
        return (
            f"{path} is not under BAM's layout .../{{pascal|coco}}/split{{k}}/{{resnet50|vgg}}/best.pth, so its "
            "fold cannot be checked from the path; make sure it is the base learner of this fold"
        )
    found = {"dataset": match["dataset"], "fold": int(match["fold"]), "backbone": match["backbone"]}
    wanted = {"dataset": split.split_dataset, "fold": split.fold, "backbone": BAM_BACKBONE_DIRS[backbone]}
    wrong = [k for k in wanted if found[k] != wanted[k]]
    if wrong:
        detail = ", ".join(
            f"{k}: the file's folder says {found[k]!r}, you asked for {wanted[k]!r}" for k in wrong
        )
        raise BAMImportError(
            f"{path} is BAM's base learner of another setting ({detail}). A base learner of another fold has "
            "seen this fold's novel classes; import the file of the same dataset, fold and backbone"
        )
    return None


def convert_bam_state(state: Mapping[str, Tensor], backbone: str, path: Path) -> dict[str, Tensor]:
    """Rename every key; two keys mapping to one name is an error (nothing is silently dropped)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = rename_key(key, backbone)
        if new in out:
            raise BAMImportError(f"{path}: keys map to {new} twice (is it a BAM PSPNet checkpoint?)")
        out[new] = value
    return out


def import_bam_base_learner(
    source: str | Path,
    *,
    dataset: str,
    fold: int,
    backbone: str,
    coco_split: str = "interleaved",
    out: str | Path | None = None,
    weights_dir: str | Path = "initmodel",
    width_mult: float = 1.0,
) -> tuple[Path, str | None]:
    """Write svfseg's base-learner file for ``(dataset, fold, backbone)`` from BAM's ``source``.

    Returns the written path and a warning (or None). Nothing is written when a check fails, and the
    file appears atomically (a failed run never leaves a partial file that loads). ``width_mult``: BAM
    released full-width nets (1.0); tests use narrow ones.
    """
    if backbone not in BAM_BACKBONE_DIRS:
        raise BAMImportError(
            f"--backbone {backbone!r}: BAM released base learners for {sorted(BAM_BACKBONE_DIRS)}"
        )
    split = FoldSpec(dataset, fold, coco_split=coco_split)
    if split.split_dataset != dataset:
        raise BAMImportError(f"--dataset {dataset!r}: BAM released base learners for pascal and coco only")
    source = Path(source)
    warning = check_source_path(source, split, backbone)
    raw, epoch = read_bam_checkpoint(source)
    state = convert_bam_state(drop_encoder_aliases(raw, source), backbone, source)
    num_classes = split.num_base_labels
    classifier = state.get("cls.4.weight")
    if classifier is not None and classifier.shape[0] != num_classes:
        raise BAMImportError(
            f"{source}: the classifier has {classifier.shape[0]} outputs, a {dataset} fold-{fold} base learner "
            f"has {num_classes} (base classes + background); is it the file of another dataset?"
        )
    model = PSPNet(backbone_shell(backbone, width_mult), num_classes=num_classes)
    how = f"import BAM's {split.split_dataset}/split{fold}/{BAM_BACKBONE_DIRS[backbone]}/best.pth"
    try:
        load_exact_state(model, state, source, how)
    except BaseLearnerCheckpointError as err:
        raise BAMImportError(f"{err} (keys renamed from BAM's names; is it a {backbone} PSPNet?)") from err
    digest = sha256_file(source)
    meta: dict[str, Any] = {
        "dataset": dataset,
        "fold": fold,
        "backbone": backbone,
        "width_mult": float(width_mult),
        "source": "bam-release",
        "source_file": source.name,
        "source_sha256": digest,
    }
    if epoch is not None:
        meta["source_epoch"] = epoch
    if dataset == "coco":
        meta["coco_split"] = coco_split
    target = Path(out) if out is not None else default_output(weights_dir, dataset, fold, backbone)
    return save_base_learner(model, target, meta), warning
