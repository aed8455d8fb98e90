"""``FoldSpec``: which classes a run trains and is evaluated on, derived and validated in one place.

Everything that needs a fold's classes (the episode lists, the DataModule, BAM's base learner with one
output per base class, the metrics) reads them from one ``FoldSpec`` built at start, so a fold, a COCO
split or a shot can never mean two things in one run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from svfseg.data.layouts import LAYOUTS, get_layout
from svfseg.data.splits import base_classes, check_fold, novel_classes


@dataclass(frozen=True)
class FoldSpec:
    """Dataset, fold, COCO class split and shot of a run, with the fold's classes derived from them.

    Args:
        dataset: ``pascal`` | ``coco`` | ``synthetic`` (synthetic uses Pascal's 20-class folds).
        fold: 0..3.
        shot: supports per episode (>= 1).
        coco_split: ``interleaved`` (every SVF/BAM/PFENet COCO config) | ``contiguous``; it changes
            nothing on Pascal-structured datasets but is kept so a record says what was asked.
    """

    dataset: str
    fold: int
    shot: int = 1
    coco_split: str = "interleaved"
    split_dataset: str = field(init=False)
    base_classes: tuple[int, ...] = field(init=False)
    novel_classes: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.dataset not in LAYOUTS:
            raise ValueError(f"dataset={self.dataset!r} is invalid: choose one of {list(LAYOUTS)}")
        if isinstance(self.shot, bool) or not isinstance(self.shot, int) or self.shot < 1:
            raise ValueError(
                f"shot={self.shot!r} is invalid: the number of support images must be an integer >= 1"
            )
        split_dataset = get_layout(self.dataset).split_dataset
        check_fold(split_dataset, self.fold, self.coco_split)
        object.__setattr__(self, "split_dataset", split_dataset)
        object.__setattr__(
            self, "base_classes", tuple(base_classes(split_dataset, self.fold, self.coco_split))
        )
        object.__setattr__(
            self, "novel_classes", tuple(novel_classes(split_dataset, self.fold, self.coco_split))
        )

    def classes(self, split: str) -> tuple[int, ...]:
        """The classes a list of ``split`` draws episodes from: base for ``train``, novel for ``val``."""
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r} is invalid: choose 'train' or 'val'")
        return self.base_classes if split == "train" else self.novel_classes

    def to_dict(self) -> dict[str, Any]:
        """The constructor arguments (what checkpoints and records store)."""
        return {"dataset": self.dataset, "fold": self.fold, "shot": self.shot, "coco_split": self.coco_split}
