"""Fold class sets of Pascal-5i and COCO-20i against the definitions of the PFENet/BAM/SVF code."""

from __future__ import annotations

import pytest

from svfseg.data.splits import NUM_CLASSES, base_classes, novel_classes

PASCAL_NOVEL = {0: [1, 2, 3, 4, 5], 1: [6, 7, 8, 9, 10], 2: [11, 12, 13, 14, 15], 3: [16, 17, 18, 19, 20]}


@pytest.mark.parametrize("fold", range(4))
def test_pascal_folds(fold: int) -> None:
    assert novel_classes("pascal", fold) == PASCAL_NOVEL[fold]
    assert base_classes("pascal", fold) == [c for c in range(1, 21) if c not in PASCAL_NOVEL[fold]]
    # coco_split has no meaning for Pascal
    assert novel_classes("pascal", fold, coco_split="contiguous") == PASCAL_NOVEL[fold]


def test_coco_interleaved_matches_reference_ranges() -> None:
    # The reference code spells the folds as these four ranges.
    expected = [range(1, 78, 4), range(2, 79, 4), range(3, 80, 4), range(4, 81, 4)]
    for fold, rng in enumerate(expected):
        assert novel_classes("coco", fold) == list(rng)
        assert len(novel_classes("coco", fold)) == 20
    assert novel_classes("coco", 0)[:3] == [1, 5, 9]
    assert novel_classes("coco", 3)[-1] == 80


def test_coco_contiguous() -> None:
    for fold in range(4):
        assert novel_classes("coco", fold, coco_split="contiguous") == list(
            range(20 * fold + 1, 20 * fold + 21)
        )


@pytest.mark.parametrize(
    ("dataset", "split"), [("pascal", "interleaved"), ("coco", "interleaved"), ("coco", "contiguous")]
)
def test_partition_properties(dataset: str, split: str) -> None:
    n = NUM_CLASSES[dataset]
    all_novel: list[int] = []
    for fold in range(4):
        novel = novel_classes(dataset, fold, split)
        base = base_classes(dataset, fold, split)
        assert base == sorted(base) and novel == sorted(novel)
        assert not set(base) & set(novel)
        assert sorted(base + novel) == list(range(1, n + 1))
        assert len(base) == n * 3 // 4
        all_novel += novel
    # the four novel sets partition the classes
    assert sorted(all_novel) == list(range(1, n + 1))


def test_num_classes() -> None:
    assert NUM_CLASSES == {"pascal": 20, "coco": 80}


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("voc", 0), {}, r"unknown dataset 'voc'.*\['coco', 'pascal'\]"),
        (("pascal", 4), {}, r"fold=4 .*\[0, 1, 2, 3\]"),
        (("pascal", -1), {}, r"fold=-1"),
        (("pascal", True), {}, r"fold=True"),
        (("coco", "0"), {}, r"fold='0'"),
        (("coco", 0), {"coco_split": "fwb"}, r"coco_split='fwb'.*\['interleaved', 'contiguous'\]"),
    ],
)
def test_bad_arguments_name_allowed_values(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        novel_classes(*args, **kwargs)
    with pytest.raises(ValueError, match=match):
        base_classes(*args, **kwargs)
