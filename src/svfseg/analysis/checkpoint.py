"""Loading a trained run and its images for analysis on CPU, without the training set-up.

A svfseg checkpoint records its run (fold, method, backbone, fine-tune strategy), so loading rebuilds
the model with its SVF layers from the stored shapes (no SVD) and copies the weights in: the loaded
model has the trained ``s`` next to the original ``s0``.
Only tensors and plain containers are unpickled (``weights_only=True``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from svfseg.data.io import read_image
from svfseg.lightning.module import FewShotSegModule
from svfseg.methods.base import find_backbone
from svfseg.run_spec import check_identity

__all__ = ["dataset_root", "find_backbone", "image_from_dataset", "load_run", "parse_run_dirs"]


def load_run(
    ckpt_path: str | Path, expect: Mapping[str, Any] | None = None
) -> tuple[FewShotSegModule, dict[str, Any]]:
    """(module in eval mode on CPU, resolved run config) of a training checkpoint.

    The run config is the Hydra config saved by training (plain containers); it is empty for checkpoints
    written without one. Pretrained weight files are not read: the checkpoint holds every weight.
    ``expect``: identity keys the checkpoint must have (e.g. ``{"fold": 0, "method": "baseline"}``);
    another run is refused with the same check that resume and eval.py use.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found; training writes them to <run dir>/checkpoints/*.ckpt "
            "(set SVFSEG_CKPT or pass the path)"
        )
    module = FewShotSegModule.load_from_checkpoint(
        path, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    )
    identity = module.spec.identity()
    unknown = sorted(set(expect or {}) - set(identity))
    if unknown:
        raise KeyError(
            f"expect={dict(expect or {})} has unknown key(s) {unknown}; use some of {sorted(identity)}"
        )
    check_identity(
        identity,
        dict(expect or {}),
        source=f"checkpoint {path}",
        target="the analysis asks for",
        fix="pick the checkpoint of the run you asked for",
    )
    module.eval()
    return module, dict(module.run_config or {})


def dataset_root(run_config: dict[str, Any]) -> Path:
    """The dataset root recorded in a run config (``dataset.root``)."""
    root = (run_config.get("dataset") or {}).get("root")
    if not root:
        raise KeyError(
            "the run config has no dataset.root (checkpoint saved without a run config?); "
            "pass the dataset root explicitly"
        )
    return Path(root)


def image_from_dataset(root: str | Path | None, rel_path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB image at ``root / rel_path``; an absolute ``rel_path`` is used as is (root may be None).

    Paths are relative to the dataset root as in svfseg's lists, e.g. ``JPEGImages/2007_000033.jpg``.
    """
    path = Path(rel_path)
    if not path.is_absolute():
        if root is None:
            raise ValueError(f"image path {path} is relative but no dataset root was given")
        path = Path(root) / path
    if not path.is_file():
        raise FileNotFoundError(
            f"image {path} not found; give a path relative to the dataset root {root} "
            "(e.g. JPEGImages/2007_000033.jpg for Pascal) or an absolute path"
        )
    return read_image(path)


def parse_run_dirs(spec: str) -> dict[str, Path]:
    """``"svf=runs/a<sep>full=runs/b"`` (``<sep>`` = os.pathsep) -> {label: run dir}, in the given order.

    The format of the ``SVFSEG_RUN_DIRS`` variable the analysis notebook reads for its mIoU curves.
    """
    runs: dict[str, Path] = {}
    for item in spec.split(os.pathsep):
        if not item.strip():
            continue
        label, sep, path = item.partition("=")
        if not sep or not label.strip() or not path.strip():
            raise ValueError(
                f"run dir entry {item!r} is not 'label=path'; separate entries with {os.pathsep!r}, "
                f"e.g. 'svf=outputs/run_a{os.pathsep}full=outputs/run_b'"
            )
        if label.strip() in runs:
            raise ValueError(f"run label {label.strip()!r} appears twice in {spec!r}; labels name the curves")
        runs[label.strip()] = Path(path.strip())
    return runs
