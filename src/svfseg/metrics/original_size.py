"""Predictions at each query's original resolution, where the reference BAM/SVF code evaluates them.

The references upsample the logits of the val-size canvas to an L x L square (L = max(H, W)), take the
argmax and compare it with the raw label padded with 255. Because images in a batch have different
sizes, each sample is resized on its own; the results are pasted into one 255-padded canvas so that a
single metric update covers the batch and padding counts nowhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from svfseg.labels import IGNORE_INDEX


def mask_at_original_size(logits: Tensor, height: int, width: int) -> Tensor:
    """(H, W) int64 argmax of one sample's (2, h, w) canvas scores at its original size.

    The canvas holds the image pasted top-left, resized so its long side fills it; upsampling the scores to
    an L x L square (L = max(H, W)) and cropping H x W maps them back, as the references evaluate.
    """
    side = max(height, width)
    up = F.interpolate(logits[None].float(), size=(side, side), mode="bilinear", align_corners=True)
    return up[0].argmax(dim=0)[:height, :width]


def predict_at_original_size(
    logits: Tensor,
    label_ori: Tensor,
    ori_size: Tensor | Sequence[tuple[int, int]],
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor]:
    """Return ``(pred, target)`` of shape (B, H_max, W_max) at original resolution.

    Args:
        logits: (B, 2, h, w) bg/fg scores on the val-size canvas (image pasted top-left).
        label_ori: (B, L, L) original labels, padded bottom/right with ``ignore_index``.
        ori_size: (B, 2) original (H, W) of each query; a list of (H, W) ints avoids reading a device
            tensor back to the host (a sync per batch on GPU).

    Outside each sample's H x W the target is ``ignore_index`` and the prediction 0.
    """
    if logits.ndim != 4 or logits.shape[1] != 2:
        raise ValueError(f"logits must be (B, 2, h, w), got {tuple(logits.shape)}")
    b = logits.shape[0]
    if label_ori.ndim != 3 or label_ori.shape[0] != b:
        raise ValueError(f"query_label_ori must be (B={b}, L, L), got {tuple(label_ori.shape)}")
    if isinstance(ori_size, Tensor):
        if ori_size.shape != (b, 2):
            raise ValueError(f"ori_size must be (B={b}, 2) holding (H, W), got {tuple(ori_size.shape)}")
        ori_size = ori_size.tolist()
    sizes = [(int(h), int(w)) for h, w in ori_size]
    if len(sizes) != b:
        raise ValueError(f"ori_size must hold B={b} (H, W) pairs, got {len(sizes)}")
    for i, (h, w) in enumerate(sizes):
        if h < 1 or w < 1 or max(h, w) > min(label_ori.shape[1:]):
            raise ValueError(
                f"sample {i}: ori_size {(h, w)} does not fit query_label_ori of spatial size "
                f"{tuple(label_ori.shape[1:])}; the label must be padded to at least max(H, W) per side"
            )
    h_max = max(h for h, _ in sizes)
    w_max = max(w for _, w in sizes)
    pred = torch.zeros((b, h_max, w_max), dtype=torch.int64, device=logits.device)
    target = torch.full((b, h_max, w_max), ignore_index, dtype=torch.int64, device=logits.device)
    for i, (h, w) in enumerate(sizes):
        pred[i, :h, :w] = mask_at_original_size(logits[i], h, w)
        target[i, :h, :w] = label_ori[i, :h, :w].to(device=logits.device, dtype=torch.int64)
    return pred, target
