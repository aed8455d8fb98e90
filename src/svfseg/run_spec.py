"""``RunSpec``: what one run is (fold and classes, method, backbone, fine-tune strategy), built and checked once.

train.py builds it from the composed config before any data is read; the DataModule, the LightningModule
and BAM's base-learner stage take their facts from it, checkpoints store it (``to_dict()``), and
:func:`check_identity` is the one comparison that resume, ``eval.py`` and the analysis helpers use
before a checkpoint's weights are trusted.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from svfseg.backbones import BACKBONE_NAMES
from svfseg.data.fold import FoldSpec
from svfseg.finetune import STRATEGIES, FinetuneStrategy, build_strategy
from svfseg.methods.registry import registered_models
from svfseg.svf.options import check_choice


class RunMismatchError(ValueError):
    """A checkpoint or file belongs to another run (fold, shot, dataset, method, backbone, ...)."""


@dataclass(frozen=True)
class RunSpec:
    """The immutable description of a run; every field is validated on construction.

    Args:
        fold: dataset, fold, shot, COCO split and the fold's base / novel classes.
        method: ``{"name": "baseline" | "pfenet" | "bam", **options}`` (``conf/method``).
        backbone: ``{"name": "resnet50" | "resnet101" | "resnet50_tv" | "vgg16_bn", **options}``.
        finetune: the strategy and its options, ``{"name": "svf", ...}``; built once into ``strategy``.

    The mappings are deep-copied plain containers; treat them as read-only.
    """

    fold: FoldSpec
    method: Mapping[str, Any]
    backbone: Mapping[str, Any]
    finetune: Mapping[str, Any] = field(default_factory=lambda: {"name": "freeze"})
    # Built once, with the spec that validates it: FinetuneCallback injects this very object at fit start.
    strategy: FinetuneStrategy = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        for key in ("method", "backbone"):
            value = getattr(self, key)
            if not isinstance(value, Mapping) or "name" not in value:
                raise ValueError(f"{key}={value!r} is invalid: expected a mapping with a 'name' key")
            object.__setattr__(self, key, copy.deepcopy(dict(value)))
        check_choice("method", self.method["name"], registered_models())
        check_choice("backbone.name", self.backbone["name"], BACKBONE_NAMES)
        options = dict(copy.deepcopy(dict(self.finetune)))
        name = options.pop("name", None)
        if name is None:
            raise ValueError(f"finetune.name is missing: choose finetune={'|'.join(STRATEGIES)}")
        try:
            strategy = build_strategy(name, **options)
        except (ValueError, TypeError) as err:
            raise ValueError(f"finetune={name}: {err}") from err
        object.__setattr__(self, "finetune", {"name": name, **options})
        object.__setattr__(self, "strategy", strategy)

    @classmethod
    def from_config(cls, cfg: Any) -> RunSpec:
        """The spec of a composed train.py config (``fold``, ``shot``, ``dataset``, ``method``, ...)."""
        return cls(
            fold=FoldSpec.from_config(cfg),
            method=_plain(cfg.method),
            backbone=_plain(cfg.backbone),
            finetune=_plain(cfg.finetune),
        )

    @property
    def method_name(self) -> str:
        return str(self.method["name"])

    @property
    def backbone_name(self) -> str:
        return str(self.backbone["name"])

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must agree with before its weights may be used."""
        return {
            "method": self.method_name,
            "backbone": self.backbone_name,
            "dataset": self.fold.dataset,
            "coco_split": self.fold.coco_split,
            "fold": self.fold.fold,
            "shot": self.fold.shot,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain containers (checkpoint hyper-parameters load with ``weights_only=True``)."""
        return {
            **self.fold.to_dict(),
            "method": copy.deepcopy(dict(self.method)),
            "backbone": copy.deepcopy(dict(self.backbone)),
            "finetune": copy.deepcopy(dict(self.finetune)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        fold = FoldSpec.from_dict(data)
        return cls(
            fold=fold,
            method=data["method"],
            backbone=data["backbone"],
            finetune=data.get("finetune") or {"name": "freeze"},
        )


def _plain(value: Any) -> Any:
    """Config node -> plain containers (checkpoints must load with ``weights_only=True``)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else copy.deepcopy(value)


def check_identity(
    saved: Mapping[str, Any],
    wanted: Mapping[str, Any],
    *,
    source: str,
    target: str,
    fix: str,
    names: Mapping[str, str] | None = None,
) -> None:
    """Refuse ``saved`` (a checkpoint's identity) when it differs from ``wanted`` on a key both have.

    Keys missing on one side are not compared (older checkpoints record fewer of them). The message
    reads ``{source} was trained for fold=0 but {target} fold=2; {fix}``; ``names`` renames keys on the
    wanted side to the option the user typed (eval.py's ``method_name``).
    """
    differ = [k for k in wanted if k in saved and wanted[k] is not None and saved[k] != wanted[k]]
    if not differ:
        return
    names = names or {}
    was = ", ".join(f"{k}={saved[k]}" for k in differ)
    now = ", ".join(f"{names.get(k, k)}={wanted[k]}" for k in differ)
    raise RunMismatchError(f"{source} was trained for {was} but {target} {now}; {fix}")
