"""Stand-ins for BAM's stage-1 file in tests that only run the start-up checks (no model is built).

The checks read the file's record (dataset, fold, backbone, width, base-class count) and map its tensors
without reading them, so a record with an empty state dict stands in for a trained PSPNet there; any test
that builds BAM trains or saves a real one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from svfseg.methods.pspnet import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from svfseg.run_spec import RunSpec


def write_base_learner_record(path: Path, cfg: DictConfig) -> Path:
    """A file whose record is the one stage 1 writes for ``cfg``'s dataset, fold and backbone."""
    fold = RunSpec.from_config(cfg).fold
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "dataset": fold.split_dataset,
        "fold": fold.fold,
        "coco_split": fold.coco_split,
        "backbone": str(cfg.backbone.name),
        "width_mult": float(cfg.backbone.get("width_mult", 1.0)),
        "num_classes": fold.num_base_labels,
    }
    if fold.folds is not None:
        meta["classes"] = dict(fold.fold_record())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "meta": meta}, path)
    return path
