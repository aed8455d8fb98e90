"""Trivial baselines on a run's fixed test episodes: what a number must beat before it means anything.

* ``all_foreground``: every query pixel is the class. Its mIoU is about the classes' mean area fraction.
* ``cosine_prior``: the untrained prior of the baseline (PFENet's training-free prior: for every query
  pixel, the highest cosine similarity of its last-stage feature to a support foreground feature, min-max
  normalised per image), thresholded at 0.5. It uses the pretrained backbone only, no trained weight.

Both are scored with the same metric and episodes as the trained runs (:class:`FewShotIoU` at the
original label size).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from svfseg.data.batch import EpisodeBatch
from svfseg.methods.base import FewShotModel
from svfseg.methods.components import episode_cues, resize
from svfseg.metrics import FewShotIoU

PRIOR_THRESHOLD = 0.5
BASELINES = ("all_foreground", "cosine_prior")


def all_foreground_logits(batch: EpisodeBatch, model: FewShotModel) -> Tensor:
    """Scores that make every pixel foreground."""
    b, _, h, w = batch["query_img"].shape
    logits = torch.zeros(b, 2, h, w)
    logits[:, 1] = 1.0
    return logits


def cosine_prior_logits(batch: EpisodeBatch, model: FewShotModel) -> Tensor:
    """Scores whose argmax is ``prior > PRIOR_THRESHOLD`` (the prior averaged over shots)."""
    cues = episode_cues(model, batch["query_img"], batch["support_img"], batch["support_mask"])
    prior = cues.priors.mean(dim=1)
    logits = torch.cat([torch.full_like(prior, PRIOR_THRESHOLD), prior], dim=1)
    return resize(logits, batch["query_img"].shape[-2:])


SCORERS: dict[str, Callable[[EpisodeBatch, FewShotModel], Tensor]] = {
    "all_foreground": all_foreground_logits,
    "cosine_prior": cosine_prior_logits,
}


@torch.no_grad()
def evaluate_baselines(
    model: FewShotModel, batches: Iterable[EpisodeBatch], num_classes: int
) -> dict[str, dict[str, Any]]:
    """mIoU, FB-IoU, class IoUs and episode count of each baseline over ``batches`` (one pass)."""
    model.eval()
    metrics = {name: FewShotIoU(num_classes, validate_args=False) for name in SCORERS}
    for batch in batches:
        for name, scorer in SCORERS.items():
            metrics[name].update_from_logits(
                scorer(batch, model), batch["label_ori"], batch["ori_hw"], batch["class_idx"]
            )
    results = {}
    for name, metric in metrics.items():
        r = metric.compute()
        results[name] = {
            "miou": float(r["miou"]),
            "fbiou": float(r["fbiou"]),
            "class_iou": [float(x) for x in r["class_iou"]],
            "n_episodes": int(r["n_episodes"]),
        }
    return results
