"""Fold splits of Pascal-5i and COCO-20i (base/novel class ids), as in PFENet, BAM and the SVF code.

Class ids are the dataset's label values: Pascal 1..20, COCO 1..80 (after the 90 -> 80 remapping of
``svfseg.dataprep.prepare coco``). 0 is background and 255 is ignore; neither is ever a fold class.
"""

from __future__ import annotations

NUM_CLASSES: dict[str, int] = {"pascal": 20, "coco": 80}
NUM_FOLDS = 4
COCO_SPLITS = ("interleaved", "contiguous")


def check_fold(dataset: str, fold: int, coco_split: str = "interleaved") -> None:
    """The one validation of a fold: ``fold`` in 0..3 of ``dataset``'s class split ``coco_split``."""
    if dataset not in NUM_CLASSES:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {sorted(NUM_CLASSES)}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"fold={fold!r} is invalid: choose one of {list(range(NUM_FOLDS))}")
    if coco_split not in COCO_SPLITS:
        raise ValueError(f"coco_split={coco_split!r} is invalid: choose one of {list(COCO_SPLITS)}")


def novel_classes(dataset: str, fold: int, coco_split: str = "interleaved") -> list[int]:
    """Novel (evaluation) class ids of a fold, ascending.

    Pascal fold i: 5i+1..5i+5. COCO ``interleaved`` (the split every SVF/BAM/PFENet COCO config uses):
    {i+1, i+5, ..., i+77}; ``contiguous`` (PANet style): 20i+1..20i+20. ``coco_split`` is ignored for Pascal.
    """
    check_fold(dataset, fold, coco_split)
    if dataset == "pascal":
        return list(range(5 * fold + 1, 5 * fold + 6))
    if coco_split == "interleaved":
        return list(range(fold + 1, NUM_CLASSES["coco"] + 1, NUM_FOLDS))
    return list(range(20 * fold + 1, 20 * fold + 21))


def base_classes(dataset: str, fold: int, coco_split: str = "interleaved") -> list[int]:
    """Base (training) class ids of a fold, ascending: every class that is not novel."""
    novel = set(novel_classes(dataset, fold, coco_split))
    return [c for c in range(1, NUM_CLASSES[dataset] + 1) if c not in novel]
