"""Class-wise mIoU and FB-IoU of few-shot segmentation (summed as BAM/SVF do) as a torchmetrics Metric.

Every state is an int64 pixel or episode count reduced by ``sum``: the result is exact and independent
of episode order, batch size and how episodes are sharded over processes (DDP), which a running mean
of per-episode IoUs would not be. With ``keep_episodes`` it also keeps each episode's counts (gathered
over processes and put in episode order by ``compute``), which the bootstrap intervals and the paired
comparison of two checkpoints on the same episodes need (:mod:`svfseg.metrics.bootstrap`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from svfseg.labels import IGNORE_INDEX
from svfseg.metrics.counts import episode_counts
from svfseg.metrics.original_size import predict_at_original_size


class FewShotIoU(Metric):
    """Few-shot mIoU (class-wise) and FB-IoU, as fractions in [0, 1].

    * ``miou``: foreground intersection and union summed per class over all of its episodes, then
      I/U averaged over the ``num_classes`` classes. A class never sampled counts as 0 (as in PFENet/BAM)
      and triggers a warning naming it.
    * ``fbiou``: bg and fg intersection and union summed over all episodes; the two IoUs averaged.
    * ``class_iou``: (C,) per-class foreground IoU; ``n_episodes``: episodes seen (int64).

    Args:
        num_classes: classes of the fold's evaluation list; ``class_idx`` indexes this list.
        ignore_index: target value that counts nowhere.
        validate_args: check label values and class indices in every ``update`` (as torchmetrics
            metrics do). Each check reads a flag back from the device, i.e. one host sync per batch;
            the LightningModule turns them off because its batches come from validated data.
        keep_episodes: also keep every episode's index, class index and (bg, fg) intersection and union;
            ``update`` then needs ``episode_idx`` and ``compute`` adds ``episodes`` (sorted by index).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    fg_inter: Tensor
    fg_union: Tensor
    class_episodes: Tensor
    fb_inter: Tensor
    fb_union: Tensor
    n_episodes: Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        validate_args: bool = True,
        keep_episodes: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.validate_args = bool(validate_args)
        self.keep_episodes = bool(keep_episodes)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if ignore_index in (0, 1):
            raise ValueError(f"ignore_index must differ from the labels 0 and 1, got {ignore_index}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        zeros_c = torch.zeros(self.num_classes, dtype=torch.int64)
        self.add_state("fg_inter", default=zeros_c.clone(), dist_reduce_fx="sum")
        self.add_state("fg_union", default=zeros_c.clone(), dist_reduce_fx="sum")
        self.add_state("class_episodes", default=zeros_c.clone(), dist_reduce_fx="sum")
        # Index 0 = background, 1 = foreground, summed over all episodes regardless of class.
        self.add_state("fb_inter", default=torch.zeros(2, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("fb_union", default=torch.zeros(2, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("n_episodes", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        if self.keep_episodes:  # lists of per-batch tensors, concatenated over batches and processes
            for name in ("ep_index", "ep_class", "ep_inter", "ep_union"):
                self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, pred: Tensor, target: Tensor, class_idx: Tensor, episode_idx: Tensor | None = None
    ) -> None:
        """Add a batch of episodes.

        Args:
            pred: (B, H, W) predicted labels in {0, 1}.
            target: (B, H, W) labels in {0, 1, ignore_index}.
            class_idx: (B,) index of each episode's class among the fold's evaluation classes.
            episode_idx: (B,) each episode's index in its table (needed with ``keep_episodes``).
        """
        class_idx = torch.as_tensor(class_idx, device=self.fg_inter.device)
        if class_idx.ndim != 1 or class_idx.shape[0] != pred.shape[0]:
            raise ValueError(
                f"class_idx must be (B,) with B = {pred.shape[0]} (the batch of pred), got {tuple(class_idx.shape)}"
            )
        if class_idx.dtype.is_floating_point:
            raise TypeError(f"class_idx must be an integer tensor, got dtype {class_idx.dtype}")
        class_idx = class_idx.to(torch.int64)
        out_of_range = (class_idx < 0) | (class_idx >= self.num_classes)
        if self.validate_args and bool(out_of_range.any()):
            raise ValueError(
                f"class_idx values {class_idx[out_of_range].tolist()} are outside [0, {self.num_classes}); "
                "class_idx must index the fold's evaluation class list (novel classes at test time)"
            )
        inter, union = episode_counts(pred, target, self.ignore_index, validate=self.validate_args)
        inter = inter.to(self.fg_inter.device)
        union = union.to(self.fg_inter.device)
        self.fg_inter.index_add_(0, class_idx, inter[:, 1])
        self.fg_union.index_add_(0, class_idx, union[:, 1])
        self.class_episodes.index_add_(0, class_idx, torch.ones_like(class_idx))
        self.fb_inter += inter.sum(dim=0)
        self.fb_union += union.sum(dim=0)
        self.n_episodes += class_idx.shape[0]
        if self.keep_episodes:
            if episode_idx is None:
                raise ValueError("FewShotIoU(keep_episodes=True).update needs episode_idx (B,)")
            episode_idx = (
                torch.as_tensor(episode_idx, device=self.fg_inter.device).to(torch.int64).reshape(-1)
            )
            if episode_idx.shape[0] != class_idx.shape[0]:
                raise ValueError(
                    f"episode_idx must be (B,) with B = {class_idx.shape[0]}, got {tuple(episode_idx.shape)}"
                )
            self.ep_index.append(episode_idx)
            self.ep_class.append(class_idx)
            self.ep_inter.append(inter)
            self.ep_union.append(union)

    def update_from_logits(
        self,
        logits: Tensor,
        label_ori: Tensor,
        ori_hw: Tensor | Sequence[tuple[int, int]],
        class_idx: Tensor,
        episode_idx: Tensor | None = None,
    ) -> None:
        """Evaluate logits (B, 2, h, w) at each query's original size (see ``predict_at_original_size``)."""
        pred, target = predict_at_original_size(logits, label_ori, ori_hw, self.ignore_index)
        self.update(pred, target, class_idx, episode_idx)

    def compute(self) -> dict[str, Tensor]:
        """Return ``miou``, ``fbiou`` (float32 scalars), ``class_iou`` (C,) and ``n_episodes``.

        torchmetrics squeezes one-element results, so ``class_iou`` is 0-d when ``num_classes == 1``.
        """
        unsampled = (self.class_episodes == 0).nonzero().flatten().tolist()
        if unsampled:
            warnings.warn(
                f"FewShotIoU: classes {unsampled} (indices into the fold's evaluation classes) were never "
                f"sampled in {int(self.n_episodes)} episodes; they count as IoU 0 in the mIoU, as in the "
                "BAM/SVF repos. Evaluate more episodes to cover every class.",
                stacklevel=2,
            )
        class_iou = _safe_ratio(self.fg_inter, self.fg_union)
        fb_iou = _safe_ratio(self.fb_inter, self.fb_union)
        result = {
            "miou": class_iou.mean().float(),
            "fbiou": fb_iou.mean().float(),
            "class_iou": class_iou.float(),
            "n_episodes": self.n_episodes.clone(),
        }
        if self.keep_episodes:
            result["episodes"] = self._episodes()
        return result

    def _episodes(self) -> dict[str, Tensor]:
        """Each episode's ``index``, ``class_idx``, ``inter`` and ``union`` ((N, 2): bg, fg), by episode index."""
        if isinstance(self.ep_index, list) and not self.ep_index:
            empty = torch.zeros(0, dtype=torch.int64, device=self.fg_inter.device)
            return {
                "index": empty,
                "class_idx": empty,
                "inter": empty.reshape(0, 2),
                "union": empty.reshape(0, 2),
            }
        index = dim_zero_cat(self.ep_index)
        order = torch.argsort(index, stable=True)
        return {
            "index": index[order],
            "class_idx": dim_zero_cat(self.ep_class)[order],
            "inter": dim_zero_cat(self.ep_inter).reshape(-1, 2)[order],
            "union": dim_zero_cat(self.ep_union).reshape(-1, 2)[order],
        }


def _safe_ratio(inter: Tensor, union: Tensor) -> Tensor:
    """I / U in float64, 0 where U is 0 (the BAM/SVF repos' I / (U + 1e-10) unrounded)."""
    union_f = union.to(torch.float64)
    return torch.where(union > 0, inter.to(torch.float64) / union_f.clamp(min=1.0), torch.zeros_like(union_f))
