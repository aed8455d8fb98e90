"""Predictions at each query's original resolution, where the BAM/SVF repos evaluate them.

Both upsample the logits of the val-size canvas to an L x L square (L = max(H, W)), take the
argmax and compare it with the raw label padded with 255. Because images in a batch have different
sizes, each sample is resized on its own; the results are pasted into one 255-padded canvas so that a
single metric update covers the batch and padding counts nowhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from svfseg.labels import IGNORE_INDEX


def mask_at_original_size(logits: Tensor, height: int, width: int) -> Tensor:
    """(H, W) int64 argmax of one sample's (C, h, w) canvas scores at its original size.

    C = 2 (background, foreground) for the few-shot methods; BAM's stage-1 PSPNet scores its base classes.

    The canvas holds the image pasted top-left, resized so its long side fills it; upsampling the scores to
    an L x L square (L = max(H, W)) and cropping H x W maps them back, as the BAM/SVF repos do.
    """
    side = max(height, width)
    up = F.interpolate(logits[None].float(), size=(side, side), mode="bilinear", align_corners=True)
    return up[0].argmax(dim=0)[:height, :width]


# Above this many pixels (L x L), binary_mask_at_original_size works in bands of rows instead of holding
# the L x L float scores and their int64 argmax (a 10000 x 10000 query: 0.8 GB + 0.8 GB).
FULL_RESOLUTION_PIXELS = 2048 * 2048
ROWS_PER_BAND = 256


def binary_mask_at_original_size(
    logits: Tensor, height: int, width: int, *, rows_per_band: int | None = None
) -> np.ndarray:
    """(H, W) uint8 mask (1 = foreground) of :func:`mask_at_original_size`, without full-size float buffers.

    Up to ``FULL_RESOLUTION_PIXELS`` it is that function itself. Above (or with ``rows_per_band`` given),
    bilinear upsampling is done as PyTorch's CPU kernel does it, separably: the width pass by
    ``F.interpolate`` (the height weights are then 1 and 0, so it is exact), then the height pass for
    ``rows_per_band`` output rows at a time with the kernel's weights and its order of operations
    (``w0 * row0 + (w1 * row1)``, fused). Only a (2, h, W) buffer and one band exist at a time; the
    mask equals the full computation (tests/tasks/test_reliability_inputs.py checks it).
    """
    side = max(height, width)
    if rows_per_band is None and side * side <= FULL_RESOLUTION_PIXELS:
        return mask_at_original_size(logits, height, width).to(torch.uint8).cpu().numpy()
    rows = max(1, int(rows_per_band or ROWS_PER_BAND))
    scores = logits.detach().float().cpu()
    h = scores.shape[1]
    across = F.interpolate(scores[None], size=(h, side), mode="bilinear", align_corners=True)[0, :, :, :width]
    scale = torch.tensor(h - 1, dtype=torch.float32) / (side - 1) if side > 1 else torch.tensor(0.0)
    out = np.empty((height, width), np.uint8)
    for top in range(0, height, rows):
        src = scale * torch.arange(top, min(height, top + rows), dtype=torch.float32)
        i0 = src.to(torch.int64)
        w1 = src - i0.to(torch.float32)
        w0 = 1 - w1
        i1 = torch.clamp(i0 + 1, max=h - 1)
        far = (w1[None, :, None] * across[:, i1]).double()
        band = (w0.double()[None, :, None] * across[:, i0].double() + far).float()
        out[top : top + len(src)] = (band[1] > band[0]).numpy()  # argmax: a tie is background
    return out


def predict_at_original_size(
    logits: Tensor,
    label_ori: Tensor,
    ori_hw: Tensor | Sequence[tuple[int, int]],
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor]:
    """Return ``(pred, target)`` of shape (B, H_max, W_max) at original resolution.

    Args:
        logits: (B, 2, h, w) bg/fg scores on the val-size canvas (image pasted top-left).
        label_ori: (B, L, L) original labels, padded bottom/right with ``ignore_index``.
        ori_hw: the original (H, W) of each query: a list of (H, W) ints (the batch's ``ori_hw``) reads
            no device tensor back to the host (a sync per batch on GPU); a (B, 2) tensor also works.

    Outside each sample's H x W the target is ``ignore_index`` and the prediction 0.
    """
    if logits.ndim != 4 or logits.shape[1] != 2:
        raise ValueError(f"logits must be (B, 2, h, w), got {tuple(logits.shape)}")
    b = logits.shape[0]
    if label_ori.ndim != 3 or label_ori.shape[0] != b:
        raise ValueError(f"label_ori must be (B={b}, L, L), got {tuple(label_ori.shape)}")
    if isinstance(ori_hw, Tensor):
        if ori_hw.shape != (b, 2):
            raise ValueError(f"ori_hw must be (B={b}, 2) holding (H, W), got {tuple(ori_hw.shape)}")
        ori_hw = ori_hw.tolist()
    sizes = [(int(h), int(w)) for h, w in ori_hw]
    if len(sizes) != b:
        raise ValueError(f"ori_hw must hold B={b} (H, W) pairs, got {len(sizes)}")
    for i, (h, w) in enumerate(sizes):
        if h < 1 or w < 1 or max(h, w) > min(label_ori.shape[1:]):
            raise ValueError(
                f"sample {i}: ori_hw {(h, w)} does not fit label_ori of spatial size "
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
