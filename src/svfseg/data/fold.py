"""``FoldSpec``: which classes a run trains and is evaluated on, derived and validated in one place.

Everything that needs a fold's classes (the episode lists, the DataModule, BAM's base learner with one
output per base class, the metrics) reads them from one ``FoldSpec`` built at start, so a fold, a COCO
split or a shot can never mean two things in one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svfseg.data.layouts import FOLDER, LAYOUTS, get_layout
from svfseg.data.splits import NUM_CLASSES, base_classes, check_fold, novel_classes


@dataclass(frozen=True)
class FoldSpec:
    """Dataset, fold, COCO class split and shot of a run, with the fold's classes derived from them.

    Args:
        dataset: ``pascal`` | ``coco`` | ``synthetic`` (synthetic uses Pascal's 20-class folds) |
            ``folder`` (a user's dataset folder: its classes and folds travel in ``folds`` and ``names``).
        fold: 0..3 (a folder dataset: 0..K-1 of its ``folds.json``).
        shot: supports per episode (>= 1).
        coco_split: ``interleaved`` (every SVF/BAM/PFENet COCO config) | ``contiguous``; it changes
            nothing on Pascal-structured datasets but is kept so a record says what was asked.
        folds: a folder dataset's novel classes per fold (``ROOT/folds.json``); None for the others.
        names: a folder dataset's class names, class 1 first (``ROOT/classes.txt``); None for the others.
    """

    dataset: str
    fold: int
    shot: int = 1
    coco_split: str = "interleaved"
    folds: tuple[tuple[int, ...], ...] | None = None
    names: tuple[str, ...] | None = None
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
        object.__setattr__(self, "split_dataset", split_dataset)
        if self.dataset == FOLDER or self.folds is not None:
            base, novel = self._folder_classes()
        else:
            if self.names is not None:
                raise ValueError(f"dataset={self.dataset}: class names are its own; names are for folders")
            check_fold(split_dataset, self.fold, self.coco_split)
            base = tuple(base_classes(split_dataset, self.fold, self.coco_split))
            novel = tuple(novel_classes(split_dataset, self.fold, self.coco_split))
        object.__setattr__(self, "base_classes", base)
        object.__setattr__(self, "novel_classes", novel)

    def _folder_classes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Classes from explicit ``folds``: a folder dataset's own, or another class split of a standard
        dataset (e.g. the COCO-20i -> PASCAL-5i evaluation folds, svfseg.data.cross_dataset)."""
        if self.folds is None or (self.dataset == FOLDER and self.names is None):
            raise ValueError(
                "dataset=folder needs the folder's folds and class names: build the FoldSpec with "
                "FoldSpec.for_folder(root, fold, shot) (they come from ROOT/folds.json and ROOT/classes.txt)"
            )
        folds = tuple(tuple(int(c) for c in fold) for fold in self.folds)
        object.__setattr__(self, "folds", folds)
        if self.names is not None:
            object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if isinstance(self.fold, bool) or not isinstance(self.fold, int) or not 0 <= self.fold < len(folds):
            where = "this dataset folder has" if self.dataset == FOLDER else "this class split has"
            raise ValueError(
                f"fold={self.fold!r} is invalid: {where} {len(folds)} folds, choose one of {list(range(len(folds)))}"
            )
        num_classes = self.num_classes
        if any(not 1 <= c <= num_classes for fold in folds for c in fold):
            raise ValueError(f"folds {folds}: class ids must be in 1..{num_classes}")
        novel = tuple(sorted(folds[self.fold]))
        base = tuple(c for c in range(1, num_classes + 1) if c not in set(novel))
        return base, novel

    @classmethod
    def for_folder(cls, root: str | Path, fold: int, shot: int = 1) -> FoldSpec:
        """The FoldSpec of fold ``fold`` of the dataset folder ``root`` (its folds and class names read once)."""
        from svfseg.data.folder_layout import read_folder

        folder = read_folder(Path(str(root)).expanduser())
        return cls(FOLDER, fold, shot, folds=folder.folds, names=folder.class_names)

    @classmethod
    def from_config(cls, cfg: Any) -> FoldSpec:
        """The FoldSpec of a composed train.py config (``dataset``, ``fold``, ``shot``)."""
        if cfg.dataset.name == FOLDER:  # a user's folder: its classes and folds are read from it
            return cls.for_folder(str(cfg.dataset.root), cfg.fold, cfg.shot)
        coco_split = str(cfg.dataset.get("coco_split", "interleaved"))
        return cls(dataset=cfg.dataset.name, fold=cfg.fold, shot=cfg.shot, coco_split=coco_split)

    @property
    def num_base_labels(self) -> int:
        """Outputs of a base learner of this fold: its base classes and background."""
        return len(self.base_classes) + 1

    @property
    def num_classes(self) -> int:
        """Foreground classes of the dataset (label values 1..num_classes)."""
        return len(self.names) if self.names is not None else NUM_CLASSES[self.split_dataset]

    def class_names(self) -> dict[int, str]:
        """``{class id: name}`` of the dataset (for metrics.json, logs and tables)."""
        if self.names is not None:
            return {k + 1: name for k, name in enumerate(self.names)}
        from svfseg.data.class_names import class_names

        return class_names(self.dataset)

    def fold_record(self) -> dict[str, Any]:
        """What a few-shot list or cache key must know about the classes (a folder's folds included)."""
        record: dict[str, Any] = {"dataset": self.dataset, "fold": self.fold}
        if self.folds is not None:
            record["novel"] = list(self.novel_classes)
            record["num_classes"] = self.num_classes
        return record

    def classes(self, split: str) -> tuple[int, ...]:
        """The classes a list of ``split`` draws episodes from: base for ``train``, novel for ``val``."""
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r} is invalid: choose 'train' or 'val'")
        return self.base_classes if split == "train" else self.novel_classes

    def to_dict(self) -> dict[str, Any]:
        """The constructor arguments (what checkpoints and records store)."""
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "fold": self.fold,
            "shot": self.shot,
            "coco_split": self.coco_split,
        }
        if self.folds is not None:
            out["folds"] = [list(f) for f in self.folds]
        if self.names is not None:
            out["names"] = list(self.names)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> FoldSpec:
        """The inverse of :meth:`to_dict` (older records have no folds / names)."""
        folds: Sequence[Sequence[int]] | None = data.get("folds")
        names: Sequence[str] | None = data.get("names")
        return cls(
            dataset=data["dataset"],
            fold=data["fold"],
            shot=data.get("shot", 1),
            coco_split=data.get("coco_split", "interleaved"),
            folds=None if folds is None else tuple(tuple(f) for f in folds),
            names=None if names is None else tuple(names),
        )
