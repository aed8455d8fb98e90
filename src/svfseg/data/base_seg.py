"""Plain semantic segmentation on a fold's base classes: the data of BAM's stage 1 (PSPNet base learner).

BAM's code (``BaseData``): the *full* training source list with no filtering; base class c ->
``base.index(c) + 1``, novel classes -> 0 (background), 255 kept; augmentation scale [0.5, 2.0], rotate
+-10, blur, flip, crop 417; validation on the val source list resized to 417.

Difference: BAM's crop redraws while it keeps under 85 % of the pixels whose *mapped* label is 1,
i.e. of whichever base class happens to be first in the fold, a quirk of reusing the episode crop. Here
the stage-1 crop is a plain random crop.

Batches: :class:`svfseg.data.batch.SegBatch`: ``image``, ``label``, ``index``; validation adds ``label_ori``
(original resolution, 255-padded square) and ``ori_hw`` (the original (H, W)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from svfseg.data.batch import SegBatch
from svfseg.data.checks import check_root, check_scale
from svfseg.data.episodes import base_label_lut
from svfseg.data.fold import FoldSpec
from svfseg.data.io import read_sample
from svfseg.data.layouts import Pair, default_source, read_source_file
from svfseg.data.loaders import FoldDataModule, rank_and_world
from svfseg.data.samplers import (
    DOMAIN_TRAIN_SAMPLE,
    EpisodeKey,
    EpisodeSampler,
    seed_sequence,
)
from svfseg.data.transforms import SCALE_RANGES, EvalTransform, TrainTransform, pad_square

BASE_CROP = 417


class _BaseSegSource:
    """Reads a pair and maps its label to base-class indices."""

    def __init__(
        self, root: str | Path, pairs: Sequence[Pair], base: Sequence[int], num_classes: int, hint: str | None
    ):
        if not pairs:
            raise ValueError("base-class segmentation needs at least one (image, label) pair")
        self.root = Path(root)
        self.pairs = tuple(pairs)
        self.lut = base_label_lut(base)
        self.num_classes = int(num_classes)
        self.hint = hint

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self.pairs):
            raise IndexError(f"index {index} out of range for {len(self.pairs)} images")
        image, label = read_sample(self.root, self.pairs[index], self.num_classes, hint=self.hint)
        return image, self.lut[label]


class BaseClassSegDataset(Dataset):
    """Training split: ``dataset[(epoch, index)]`` is a pure function of ``(seed, epoch, index)``."""

    def __init__(
        self,
        root: str | Path,
        pairs: Sequence[Pair],
        base: Sequence[int],
        transform: TrainTransform,
        seed: int,
        *,
        num_classes: int,
        hint: str | None = None,
    ) -> None:
        self.source = _BaseSegSource(root, pairs, base, num_classes, hint)
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.source.pairs)

    def __getitem__(self, key: EpisodeKey | int) -> SegBatch:
        epoch, index = (0, key) if isinstance(key, (int, np.integer)) else key
        image, label = self.source.read(int(index))
        out = self.transform(
            image, label, seed_sequence(self.seed, DOMAIN_TRAIN_SAMPLE, int(epoch), int(index))
        )
        return {"image": out.image, "label": out.mask, "index": int(index)}


class BaseClassSegValDataset(Dataset):
    """Validation split: deterministic resize plus the original-resolution label for metrics."""

    def __init__(
        self,
        root: str | Path,
        pairs: Sequence[Pair],
        base: Sequence[int],
        transform: EvalTransform,
        *,
        num_classes: int,
        hint: str | None = None,
    ) -> None:
        self.source = _BaseSegSource(root, pairs, base, num_classes, hint)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source.pairs)

    def __getitem__(self, index: int) -> SegBatch:
        image, label = self.source.read(int(index))
        out = self.transform(image, label)
        return {
            "image": out.image,
            "label": out.mask,
            "index": int(index),
            "label_ori": torch.from_numpy(pad_square(label)).long(),
            "ori_hw": (int(label.shape[0]), int(label.shape[1])),  # host ints: no device sync to read them
        }


class BaseSegDataModule(FoldDataModule):
    """Stage-1 data: full source lists of a dataset, labels mapped to the fold's base classes.

    ``num_seg_classes`` = base classes + background (16 Pascal, 61 COCO) is the PSPNet output width.
    """

    def __init__(
        self,
        split: FoldSpec,
        root: str | Path = "data/VOCdevkit/VOC2012",
        train_size: int = BASE_CROP,
        eval_size: int = BASE_CROP,
        batch_size: int = 3,
        eval_batch_size: int = 6,
        num_workers: int = 8,
        seed: int = 321,
        source_lists: Mapping[str, Any] | None = None,
        scale: Sequence[float] | None = None,
        persistent_workers: bool = False,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            split,
            root,
            train_size=train_size,
            eval_size=eval_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            seed=seed,
            source_lists=source_lists,
            persistent_workers=persistent_workers,
            pin_memory=pin_memory,
        )
        self.scale = check_scale("scale", scale) if scale is not None else SCALE_RANGES["base"]
        self.pairs: dict[str, tuple[Pair, ...]] = {}

    @property
    def num_seg_classes(self) -> int:
        return len(self.base_classes) + 1

    def setup(self, stage: str | None = None) -> None:
        root = check_root(self.dataset, self.root)
        for split in ("train", "val"):
            if split not in self.pairs:
                given = self.source_lists.get(split)
                source = (
                    read_source_file(given, self.layout, root=root.resolve())
                    if given is not None
                    else default_source(self.layout, root.resolve(), split)
                )
                self.pairs[split] = source.pairs

    def _pairs(self, split: str) -> tuple[Pair, ...]:
        if split not in self.pairs:
            raise RuntimeError(
                f"the {split} list is not read: call datamodule.setup() before asking for loaders"
            )
        return self.pairs[split]

    def train_dataloader(self) -> DataLoader:
        ds = BaseClassSegDataset(
            self.root,
            self._pairs("train"),
            self.base_classes,
            TrainTransform(self.train_size, self.scale, foreground_keep=None),
            self.seed,
            num_classes=self.split.num_classes,
            hint=self.layout.hint(self.root),
        )
        rank, world = rank_and_world(self)
        sampler = EpisodeSampler(len(ds), shuffle=True, seed=self.seed, rank=rank, world_size=world)
        return self.train_loader(ds, sampler)  # resumable mid-epoch, like the few-shot stage

    def val_dataloader(self) -> DataLoader:
        ds = BaseClassSegValDataset(
            self.root,
            self._pairs("val"),
            self.base_classes,
            EvalTransform(self.eval_size),
            num_classes=self.split.num_classes,
            hint=self.layout.hint(self.root),
        )
        return self.eval_loader(ds)
