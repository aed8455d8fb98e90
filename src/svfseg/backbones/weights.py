"""Strict loading of ImageNet backbone weights from a local file, in the formats people actually have.

The PFENet/BAM/SVF repos load with ``strict=False`` and so silently ignore any key that does not match.
Here every tensor of the file must land on a backbone tensor and every backbone tensor must be filled; the only keys allowed to be dropped are the ImageNet classifier's (``fc``,
``classifier``, ``pre_logits``, ``head``), and the drop is logged.

Formats (``weights_format``):

* ``pspnet``: the deep-stem ``resnet50_v2.pth`` / ``resnet101_v2.pth`` of PSPNet (``conv1..3``,
  ``bn1..3``, ``layer1..4``, ``fc``); for ``resnet50`` / ``resnet101``.
* ``torchvision``: ``resnet50`` state dicts (``conv1``, ``bn1``, ``layer1..4``, ``fc``) for
  ``resnet50_tv``; ``vgg16_bn`` state dicts (``features.N``, ``classifier``) for ``vgg16_bn``.
* ``timm``: same ResNet names as torchvision; VGG has ``features.N`` plus ``pre_logits`` / ``head``.
* ``native``: a :class:`Backbone` state dict (``layer0..layer4``), e.g. a backbone saved by svfseg.
* ``auto``: detected from the key names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from svfseg.backbones.base import Backbone
from svfseg.backbones.provenance import provenance_hint
from svfseg.backbones.vgg import VGG_SLICES
from svfseg.files import read_tensor_file
from svfseg.messages import preview

log = logging.getLogger(__name__)

WEIGHT_FORMATS = ("auto", "pspnet", "torchvision", "timm", "native")
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "pre_logits.", "head.")
WRAPPER_KEYS = ("state_dict", "model")
FAMILY_FORMATS: dict[str, tuple[str, ...]] = {
    "resnet_deep": ("pspnet", "native"),
    "resnet_tv": ("torchvision", "timm", "native"),
    "vgg": ("torchvision", "timm", "native"),
}
FAMILY_TEXT = {
    "resnet_deep": "a deep-stem ResNet (PSPNet v2 weights; backbone resnet50 / resnet101)",
    "resnet_tv": "a 7x7-stem ResNet (torchvision / timm weights; backbone resnet50_tv)",
    "vgg": "a VGG-16-bn (backbone vgg16_bn)",
}
# Where the README tells users to put each backbone's ImageNet weights.
DEFAULT_FILES = {
    "resnet50": "initmodel/resnet50_v2.pth",
    "resnet101": "initmodel/resnet101_v2.pth",
    "resnet50_tv": "initmodel/resnet50_tv.pth",
    "vgg16_bn": "initmodel/vgg16_bn.pth",
}
_STEM_KEY = re.compile(r"^(conv[123]|bn[123])\.")
_VGG_KEY = re.compile(r"^features\.(\d+)\.(.+)$")
_MAX_LISTED = 20


class BackboneWeightsError(RuntimeError):
    """A weight file that cannot be read or does not fit the backbone; the message says why."""


@dataclass(frozen=True)
class WeightsReport:
    """What :func:`load_backbone_weights` did, for logs and tests."""

    path: Path
    weights_format: str
    loaded: int  # tensors copied into the backbone
    dropped: tuple[str, ...]  # classifier keys of the file that were not used
    filled: tuple[str, ...]  # BN step counters absent from old files, kept at the backbone's value


def missing_file_message(path: Path, backbone_name: str | None) -> str:
    default = DEFAULT_FILES.get(backbone_name or "", "initmodel/<backbone>.pth")
    return (
        f"backbone weights file {path} does not exist. Get the ImageNet weights of "
        f"{backbone_name or 'the backbone'} with `python -m svfseg.weights list` / `fetch NAME` and put them "
        f"there (default location {default}; README section 'Getting the weights'), or set "
        "backbone.pretrained=null for a random init (smoke tests only)."
    )


def read_state_dict(path: str | Path, backbone_name: str | None = None) -> dict[str, Tensor]:
    """Tensors of a backbone weight file, whatever wrote it: ``.safetensors`` (timm's hub files) or a
    ``torch.save`` file (zip or legacy), plain or under ``state_dict`` / ``model``, keys with or without
    DDP's ``module.`` prefix. Every backbone family reads its file here."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing_file_message(path, backbone_name))
    fix = provenance_hint(path).strip() or "write it again (python -m svfseg.weights fetch NAME)"
    obj = read_tensor_file(path, error=BackboneWeightsError, what="backbone weights", fix=fix)
    for _ in range(2):
        wrapped = [k for k in WRAPPER_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), dict)]
        if wrapped:
            obj = obj[wrapped[0]]
    if not isinstance(obj, dict):
        raise BackboneWeightsError(
            f"backbone weights {path} hold a {type(obj).__name__}, not a state dict of tensors"
        )
    not_tensors = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise BackboneWeightsError(
            f"backbone weights {path} are not a plain state dict: non-tensor entries {preview(sorted(map(str, not_tensors)), _MAX_LISTED)}. "
            f"Save model.state_dict() or wrap it under one of {WRAPPER_KEYS}."
        )
    if obj and all(str(k).startswith("module.") for k in obj):
        obj = {str(k)[len("module.") :]: v for k, v in obj.items()}
    return {str(k): v for k, v in obj.items()}


def detect_format(keys: Iterable[str]) -> str | None:
    """The weight format a set of keys is written in, or None when no known layout matches."""
    keys = set(keys)
    if any(k.startswith("layer0.") for k in keys):
        return "native"
    if any(k.startswith("features.") for k in keys):
        return "timm" if any(k.startswith(("pre_logits.", "head.")) for k in keys) else "torchvision"
    if any(k.startswith("layer1.") for k in keys):
        if "conv2.weight" in keys or "bn3.weight" in keys:
            return "pspnet"
        if "conv1.weight" in keys:
            return "torchvision"
    return None


def file_family(keys: Iterable[str]) -> str | None:
    """Which backbone family the keys were saved from (None when the layout is unknown)."""
    keys = set(keys)
    if any(k.startswith("features.") for k in keys) or "layer0.0.weight" in keys:
        return "vgg"
    if "conv2.weight" in keys or "layer0.conv2.weight" in keys:
        return "resnet_deep"
    if "conv1.weight" in keys or "layer0.conv1.weight" in keys:
        return "resnet_tv"
    return None


def _map_key(key: str, weights_format: str, family: str) -> str:
    """Our module name for one file key; keys without a rule keep their name (and are then unexpected)."""
    if weights_format == "native":
        return key
    if family == "vgg":
        match = _VGG_KEY.match(key)
        if match:
            index, rest = int(match.group(1)), match.group(2)
            for stage, (start, end) in VGG_SLICES.items():
                if start <= index < end:
                    return f"{stage}.{index - start}.{rest}"
        return key
    if _STEM_KEY.match(key):
        return f"layer0.{key}"
    return key


def _check_format(weights_format: str, keys: set[str], path: Path, backbone: Backbone) -> str:
    if weights_format not in WEIGHT_FORMATS:
        raise ValueError(f"weights_format={weights_format!r} is invalid: choose one of {WEIGHT_FORMATS}")
    if weights_format == "auto":
        detected = detect_format(keys)
        if detected is None:
            raise BackboneWeightsError(
                f"cannot tell the format of backbone weights {path}: first keys {preview(keys, 8)}. "
                "Known layouts: pspnet (conv1..3, bn1..3, layer1..4, fc), torchvision/timm ResNet (conv1, bn1, "
                "layer1..4, fc), torchvision/timm VGG (features.N, classifier / pre_logits / head), native "
                "(layer0..layer4). Rename the keys or pass weights_format=... explicitly."
            )
        weights_format = detected
    allowed = FAMILY_FORMATS[backbone.family]
    if weights_format not in allowed:
        raise BackboneWeightsError(
            f"weights_format={weights_format!r} does not fit backbone {backbone.name}, "
            f"{FAMILY_TEXT[backbone.family]}: it takes {allowed} (file {path})"
        )
    found = file_family(keys)
    if found is not None and found != backbone.family:
        raise BackboneWeightsError(
            f"backbone weights {path} come from {FAMILY_TEXT[found]}, but the backbone is {backbone.name}, "
            f"{FAMILY_TEXT[backbone.family]}. Choose the matching backbone name or weight file."
        )
    return weights_format


def remap_state_dict(
    state: dict[str, Tensor], weights_format: str, family: str
) -> tuple[dict[str, Tensor], dict[str, str], tuple[str, ...]]:
    """Rename file keys to backbone keys; returns (mapped, backbone key -> file key, dropped keys)."""
    dropped = tuple(sorted(k for k in state if k.startswith(CLASSIFIER_PREFIXES)))
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        if key in dropped:
            continue
        new = _map_key(key, weights_format, family)
        if new in mapped:
            raise BackboneWeightsError(f"file keys {origin[new]} and {key} both map to backbone key {new}")
        mapped[new], origin[new] = value, key
    return mapped, origin, dropped


def load_backbone_weights(
    backbone: Backbone, path: str | Path, weights_format: str = "auto"
) -> WeightsReport:
    """Copy a weight file into ``backbone``, strictly (see the module docstring for formats)."""
    path = Path(path)
    state = read_state_dict(path, backbone.name)
    weights_format = _check_format(weights_format, set(state), path, backbone)
    mapped, origin, dropped = remap_state_dict(state, weights_format, backbone.family)

    target = backbone.state_dict()
    filled = tuple(
        sorted(k for k in target if k not in mapped and k.endswith(".num_batches_tracked"))
    )  # absent from pre-1.0 files; unused by BN with a momentum, so the backbone's value stays
    missing = sorted(k for k in target if k not in mapped and k not in filled)
    unexpected = sorted(origin[k] for k in mapped if k not in target)
    if missing or unexpected:
        raise BackboneWeightsError(
            f"backbone weights {path} (format {weights_format}) do not match backbone {backbone.name} "
            f"(width_mult={backbone.width_mult}): {len(missing)} missing key(s) [{preview(sorted(missing), _MAX_LISTED)}], "
            f"{len(unexpected)} unexpected key(s) [{preview(sorted(unexpected), _MAX_LISTED)}]. Check backbone.name and "
            f"backbone.weights_format.{provenance_hint(path, backbone.width_mult)}"
        )
    mismatched = [
        f"{origin[k]} -> {k}: file {tuple(v.shape)} vs backbone {tuple(target[k].shape)}"
        for k, v in mapped.items()
        if v.shape != target[k].shape
    ]
    if mismatched:
        raise BackboneWeightsError(
            f"backbone weights {path} have {len(mismatched)} shape mismatch(es) with backbone "
            f"{backbone.name} (width_mult={backbone.width_mult}): {preview(mismatched, _MAX_LISTED, sep='; ')}."
            f"{provenance_hint(path, backbone.width_mult) or ' Check backbone.width_mult and backbone.name.'}"
        )
    full = {**{k: target[k] for k in filled}, **mapped}
    backbone.load_state_dict(full, strict=True)
    if dropped:
        log.info(
            "backbone weights %s: dropped %d classifier key(s): %s",
            path,
            len(dropped),
            preview(sorted(dropped), _MAX_LISTED),
        )
    log.info(
        "loaded %d tensors from %s (format %s) into %s", len(mapped), path, weights_format, backbone.name
    )
    return WeightsReport(path, weights_format, len(mapped), dropped, filled)
