"""Batch collation for episode and segmentation samples (the keys: :mod:`svfseg.data.batch`).

Everything is stacked as usual except the original-resolution labels, which differ in size per sample:
each is already a square ``L x L`` (255-padded bottom/right) and is padded again with 255 to the largest
``L`` in the batch, so ignored pixels stay ignored by the metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from svfseg.data.batch import HOST_KEYS, RAGGED_KEYS
from svfseg.labels import IGNORE_INDEX


def pad_square_stack(labels: Sequence[Tensor], fill: int = IGNORE_INDEX) -> Tensor:
    """Stack square 2-D labels of different sizes into ``(B, L, L)``, ``L`` = largest side, padding with ``fill``."""
    for lab in labels:
        if lab.ndim != 2 or lab.shape[0] != lab.shape[1]:
            raise ValueError(
                f"original-resolution labels must be square 2-D tensors, got shape {tuple(lab.shape)}"
            )
    side = max(int(lab.shape[0]) for lab in labels)
    out = torch.full((len(labels), side, side), fill, dtype=labels[0].dtype)
    for i, lab in enumerate(labels):
        out[i, : lab.shape[0], : lab.shape[1]] = lab
    return out


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate a list of sample dicts (tensors or ints) into a batch dict of tensors (``HOST_KEYS``: lists)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    keys = samples[0].keys()
    batch: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]
        if key in RAGGED_KEYS:
            batch[key] = pad_square_stack(values)
        elif key in HOST_KEYS:
            batch[key] = [tuple(v) for v in values]
        elif isinstance(values[0], Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.as_tensor(values)
    return batch
