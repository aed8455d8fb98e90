"""Per-episode background/foreground pixel counts, counted as the BAM/SVF repos count them.

Kept apart from the metric class so the counting rule, the one thing every FSS number rests on, can be
checked on its own against a plain numpy computation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from svfseg.labels import IGNORE_INDEX


def _check_binary(name: str, x: Tensor, allowed: tuple[int, ...]) -> None:
    if x.dtype.is_floating_point or x.dtype.is_complex:
        raise TypeError(
            f"{name} must be an integer or bool label map, got dtype {x.dtype}; "
            "pass argmax(logits, dim=1) rather than probabilities or logits"
        )
    if x.numel() == 0:
        return
    bad = ~torch.isin(x.to(torch.int64), torch.tensor(allowed, device=x.device))
    if bool(bad.any()):
        found = torch.unique(x[bad]).tolist()
        raise ValueError(f"{name} holds values {found[:10]} outside the allowed set {sorted(allowed)}")


def episode_counts(
    pred: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX, *, validate: bool = True
) -> tuple[Tensor, Tensor]:
    """Intersection and union per episode and class (bg=0, fg=1), as int64 of shape (B, 2).

    Pixels whose target is ``ignore_index`` count in no term (neither the prediction area nor the union),
    which is what the BAM/SVF repos' ``output[target == 255] = 255`` achieves.

    Args:
        pred: (B, H, W) predicted labels in {0, 1}.
        target: (B, H, W) labels in {0, 1, ignore_index}.
        validate: check the label values (reads a flag back from the device: one sync per call).
    """
    if pred.ndim != 3 or target.ndim != 3 or pred.shape != target.shape:
        raise ValueError(
            f"pred and target must both be (B, H, W) with equal shapes, got pred {tuple(pred.shape)} "
            f"and target {tuple(target.shape)}"
        )
    if validate:
        _check_binary("pred", pred, (0, 1))
        _check_binary("target", target, (0, 1, ignore_index))
    pred = pred.to(torch.int64).flatten(1)
    target = target.to(torch.int64).flatten(1)
    valid = target != ignore_index
    inter, union = [], []
    for k in (0, 1):
        p = (pred == k) & valid
        t = target == k
        i = (p & t).sum(dim=1)
        inter.append(i)
        union.append(p.sum(dim=1) + t.sum(dim=1) - i)
    return torch.stack(inter, dim=1), torch.stack(union, dim=1)
