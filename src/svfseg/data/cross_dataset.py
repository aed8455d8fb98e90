"""Which classes a checkpoint is evaluated on when ``eval.py`` tests it on another dataset.

Two protocols of the few-shot segmentation literature:

* **COCO-20i -> PASCAL-5i** (the cross-dataset setting of RePRI, HSNet and BAM): a model trained on
  COCO fold i is tested on the PASCAL classes whose COCO category is novel in COCO fold i, so no test class
  was a training class. Every PASCAL class is a COCO category; with COCO's interleaved split (the one the
  SVF, BAM and PFENet configs use) that gives fold 0 = {aeroplane, boat, chair, diningtable, dog, person},
  fold 1 = {bicycle, bus, horse, sofa}, fold 2 = {bird, car, pottedplant, sheep, train, tvmonitor},
  fold 3 = {bottle, cat, cow, motorbike}. The folds are computed here from the class names, not typed in.
* **Cross-domain** (any checkpoint -> a dataset folder): the folder's own fold ``k`` gives the novel
  classes. svfseg cannot know whether a folder's class is also one of the training classes; the record
  says so.
"""

from __future__ import annotations

from pathlib import Path

from svfseg.data.class_names import COCO, PASCAL_VOC
from svfseg.data.fold import FoldSpec
from svfseg.data.layouts import FOLDER
from svfseg.data.splits import NUM_FOLDS, novel_classes

# PASCAL VOC name -> COCO category name, where they are spelt differently.
VOC_TO_COCO_NAMES = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "motorbike": "motorcycle",
    "pottedplant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
}
COCO_TO_PASCAL = "COCO-20i -> PASCAL-5i"


class CrossDatasetError(ValueError):
    """An evaluation on another dataset that no protocol defines; the message lists the supported ones."""


def coco_to_pascal_folds(coco_split: str = "interleaved") -> tuple[tuple[int, ...], ...]:
    """PASCAL class ids (1..20) per COCO fold: those whose COCO category is novel in that fold."""
    coco_id = {name: k + 1 for k, name in enumerate(COCO)}
    folds = []
    for fold in range(NUM_FOLDS):
        novel = set(novel_classes("coco", fold, coco_split))
        folds.append(
            tuple(
                voc_id
                for voc_id, name in enumerate(PASCAL_VOC, 1)
                if coco_id[VOC_TO_COCO_NAMES.get(name, name)] in novel
            )
        )
    return tuple(folds)


def evaluation_fold(
    trained: FoldSpec, target: str, root: str | Path | None, fold: int | None
) -> tuple[FoldSpec, str]:
    """The FoldSpec to evaluate a checkpoint trained on ``trained`` with, on dataset ``target``, and the
    protocol's name.

    ``root``: the target dataset's root (a folder dataset reads its classes from it); ``fold``: the
    target's fold (default: the training fold).
    """
    fold = trained.fold if fold is None else int(fold)
    if target == "pascal" and trained.split_dataset == "coco":
        if fold != trained.fold:
            raise CrossDatasetError(
                f"eval_fold={fold}: {COCO_TO_PASCAL} tests COCO fold {trained.fold}'s model on the PASCAL "
                f"classes that are novel in that COCO fold; another fold's classes were training classes"
            )
        folds = coco_to_pascal_folds(trained.coco_split)
        return FoldSpec("pascal", fold, trained.shot, folds=folds), COCO_TO_PASCAL
    if target == FOLDER:
        if root is None:
            raise CrossDatasetError("eval_dataset=folder needs dataset_root=ROOT (the dataset folder)")
        spec = FoldSpec.for_folder(root, fold, trained.shot)
        return spec, f"cross-domain: {trained.dataset} -> folder {Path(str(root)).name}"
    raise CrossDatasetError(
        f"eval_dataset={target} for a checkpoint trained on {trained.dataset}: no protocol defines its test "
        f"classes. Supported: {COCO_TO_PASCAL} (a coco checkpoint with eval_dataset=pascal) and cross-domain "
        "(any checkpoint with eval_dataset=folder dataset_root=ROOT eval_fold=K)"
    )
