"""The qualitative figure: the same test episodes, one row each, one prediction per strategy.

Columns: the support photo with its mask, the query photo, the query's ground truth, then the prediction
of every strategy's checkpoint. Images are shown as the network saw them (resized, ImageNet-normalised
input mapped back to pixels); pixels the label ignores are grey in the ground truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from svfseg.data.batch import EpisodeBatch
from svfseg.labels import IGNORE_INDEX
from svfseg.methods.base import FewShotModel

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
FOREGROUND = np.array([1.0, 0.15, 0.1])
IGNORED = np.array([0.6, 0.6, 0.6])


def to_pixels(image: Tensor) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) floats in [0, 1]."""
    return np.clip(image.permute(1, 2, 0).numpy() * STD + MEAN, 0.0, 1.0)


def overlay(pixels: np.ndarray, mask: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
    """``pixels`` with the foreground tinted red (and ignored pixels grey)."""
    out = pixels.copy()
    out[mask] = 0.45 * out[mask] + 0.55 * FOREGROUND
    if ignore is not None:
        out[ignore] = IGNORED
    return out


def pick_episodes(batches: Iterable[EpisodeBatch], n: int) -> list[EpisodeBatch]:
    """The first ``n`` episodes of distinct classes (in episode order), each as a batch of one."""
    picked: list[EpisodeBatch] = []
    seen: set[int] = set()
    for batch in batches:
        for i, cls in enumerate(batch["class_idx"].tolist()):
            if cls in seen:
                continue
            seen.add(cls)
            picked.append({k: v[i : i + 1] for k, v in batch.items() if isinstance(v, Tensor)})
            if len(picked) == n:
                return picked
    return picked


@torch.no_grad()
def predict(model: FewShotModel, episode: EpisodeBatch) -> np.ndarray:
    """The (H, W) boolean foreground prediction at the network's input size."""
    model.eval()
    out = model(episode["query_img"], episode["support_img"], episode["support_mask"])
    return (out.logits.argmax(dim=1)[0] == 1).numpy()


def qualitative_figure(
    episodes: Sequence[EpisodeBatch],
    models: Mapping[str, FewShotModel],
    class_names: Sequence[str],
    *,
    title: str,
) -> Figure:
    """One row per episode: support, query, ground truth, one prediction per model (with its IoU)."""
    if not episodes:
        raise ValueError("qualitative_figure got no episodes")
    ncols = 3 + len(models)
    fig = Figure(figsize=(1.9 * ncols, 2.0 * len(episodes) + 0.7))
    axes = fig.subplots(len(episodes), ncols, squeeze=False)
    for row, episode in zip(axes, episodes):
        support = to_pixels(episode["support_img"][0, 0])
        support_mask = episode["support_mask"][0, 0].numpy() == 1
        query = to_pixels(episode["query_img"][0])
        target = episode["query_mask"][0].numpy()
        ignore = target == IGNORE_INDEX
        truth = target == 1
        name = class_names[int(episode["class_idx"][0])]
        panels = [
            (overlay(support, support_mask), f"support: {name}"),
            (query, "query"),
            (overlay(query, truth, ignore), "ground truth"),
        ]
        for label, model in models.items():
            pred = predict(model, episode)
            valid = ~ignore
            union = np.logical_or(pred, truth)[valid].sum()
            iou = np.logical_and(pred, truth)[valid].sum() / union if union else 1.0
            panels.append((overlay(query, pred), f"{label} (IoU {100 * iou:.0f})"))
        for ax, (image, text) in zip(row, panels):
            ax.imshow(image)
            ax.set_title(text, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
