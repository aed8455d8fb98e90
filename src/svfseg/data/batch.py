"""The batch contract: every key a dataset writes and that collate, the LightningModules, the metrics, TTA
and the tools read, each spelled once here.

A dataset returns one sample: the same keys without ``B``, the ids as Python ints and ``ori_hw`` one
``(H, W)`` tuple; ``collate_samples`` stacks the samples into a batch (ids: tensors, ``ori_hw``: a list). Both kinds of batch score at the original resolution
through the same two keys, ``label_ori`` and ``ori_hw``, so one metric path serves the episodes and BAM's
stage 1.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from torch import Tensor


class EpisodeBatch(TypedDict):
    """Few-shot episodes (:mod:`svfseg.data.episodes`); shapes are of the collated batch."""

    query_img: Tensor  # (B, 3, H, W) float, normalised
    query_mask: Tensor  # (B, H, W) long in {0, 1, 255}
    support_img: Tensor  # (B, K, 3, H, W)
    support_mask: Tensor  # (B, K, H, W) long in {0, 1, 255}
    class_idx: Tensor | int  # (B,) position of the class in the fold's list (base: training, novel: eval)
    class_id: Tensor | int  # (B,) the dataset's class id
    episode_idx: Tensor | int  # (B,) the query's index in the list (training) or the table (evaluation)
    query_base_label: NotRequired[Tensor]  # training with a base learner: (B, H, W) BAM's base label
    label_ori: NotRequired[Tensor]  # evaluation: (B, L, L) binary query label, original size, 255-padded
    ori_hw: NotRequired[list[tuple[int, int]] | tuple[int, int]]  # evaluation: original (H, W), host ints


class SegBatch(TypedDict):
    """BAM's stage 1, plain segmentation on the base classes (:mod:`svfseg.data.base_seg`)."""

    image: Tensor  # (B, 3, H, W) float, normalised
    label: Tensor  # (B, H, W) long in {0..n_base, 255}
    index: Tensor | int  # (B,) the image's index in the source list
    label_ori: NotRequired[Tensor]  # validation: (B, L, L) label at the original size, 255-padded
    ori_hw: NotRequired[list[tuple[int, int]] | tuple[int, int]]  # validation: original (H, W), host ints


# Variable-size square labels: collate pads them with 255 to the batch's largest side.
RAGGED_KEYS = frozenset({"label_ori"})
# Kept as Python values on the host: Lightning moves tensors to the device, and reading a device tensor back
# (the original sizes, needed as Python ints to slice) would sync every batch.
HOST_KEYS = frozenset({"ori_hw"})
