"""Synthetic datasets: real layouts, determinism, class coverage for every fold, reuse and refusal."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest

from svfseg.data.class_names import SHAPES, class_styles
from svfseg.data.fold import FoldSpec
from svfseg.data.io import read_label, read_sample
from svfseg.data.lists.selection import build_list
from svfseg.dataprep import synthetic
from svfseg.dataprep.prepare import coco_category_map, coco_semantic_label
from svfseg.dataprep.synthetic import COCO_CATEGORY_IDS, coverage_min_pixels, make_synthetic
from tests.helpers.data import tree_digest

TINY = {"n_train": 20, "n_val": 20, "size": 64}


@pytest.fixture(scope="module")
def tiny_pascal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic("pascal", tmp_path_factory.mktemp("syn") / "pascal", seed=3, **TINY)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(
        "coco", tmp_path_factory.mktemp("syn") / "coco", n_train=80, n_val=80, size=64, seed=3
    )


def test_class_styles_are_distinct() -> None:
    twenty = class_styles(20)
    assert len(set(twenty)) == 20
    # every two of the 20 Pascal-layout classes differ in at least two of shape, colour, texture
    for a, b in itertools.combinations(twenty, 2):
        assert (a.shape != b.shape) + (a.colour != b.colour) + (a.texture != b.texture) >= 2
    assert {s.shape for s in twenty} == set(SHAPES)
    assert len(set(class_styles(80))) == 80


def test_coverage_threshold_scales_with_area() -> None:
    assert coverage_min_pixels(192) == 2048
    assert coverage_min_pixels(96) == 512
    assert coverage_min_pixels(64) == 228


def test_pascal_layout(tiny_pascal: Path) -> None:
    root = tiny_pascal
    train = [line.split() for line in (root / "lists" / "train.txt").read_text().splitlines()]
    val = [line.split() for line in (root / "lists" / "val.txt").read_text().splitlines()]
    assert len(train) == 20 and len(val) == 20
    assert train[0] == ["JPEGImages/train_000000.jpg", "SegmentationClassAug/train_000000.png"]
    assert not {i for i, _ in train} & {i for i, _ in val}  # disjoint images
    assert len(list((root / "JPEGImages").glob("*.jpg"))) == 40
    values: set[int] = set()
    for image, label in train + val:
        img, lab = read_sample(root, (image, label), 20)
        assert img.shape == (64, 64, 3) and lab.shape == (64, 64)
        assert (lab == 255).any()  # a VOC-style border band around the objects
        values |= set(np.unique(lab).tolist())
    assert values <= set(range(21)) | {255}
    assert set(range(1, 21)) <= values  # every class occurs
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["dataset"] == "synthetic" and len(meta["classes"]) == 20


def test_border_band_separates_objects_from_background(tiny_pascal: Path) -> None:
    lab = read_label(tiny_pascal / "SegmentationClassAug" / "train_000000.png", 20)
    obj = (lab > 0) & (lab < 255)
    # no object pixel touches a background pixel horizontally or vertically
    assert not (obj[:, 1:] & (lab[:, :-1] == 0)).any() and not (obj[:, :-1] & (lab[:, 1:] == 0)).any()
    assert not (obj[1:] & (lab[:-1] == 0)).any() and not (obj[:-1] & (lab[1:] == 0)).any()


def test_every_pool_of_every_fold_is_filled(tiny_pascal: Path) -> None:
    thr = coverage_min_pixels(64)
    for fold, split in itertools.product(range(4), ("train", "val")):
        lst = build_list(
            FoldSpec("synthetic", fold), tiny_pascal, split, min_pixels=thr, progress=False, workers=0
        )
        assert lst.empty_classes() == [], (fold, split)
        assert len(lst.classes) == (15 if split == "train" else 5)


def test_deterministic_given_seed(tiny_pascal: Path, tmp_path: Path) -> None:
    again = make_synthetic("pascal", tmp_path / "again", seed=3, **TINY)
    ref, new = tree_digest(tiny_pascal), tree_digest(again)
    ref = {k: v for k, v in ref.items() if not k.startswith(".svfseg_cache")}
    assert new == ref  # byte-identical images, labels, lists and metadata
    other = make_synthetic("pascal", tmp_path / "other", seed=4, **TINY)
    labels = tree_digest(other, "SegmentationClassAug/*.png")
    assert labels != tree_digest(tiny_pascal, "SegmentationClassAug/*.png")


def test_reuse_and_refusal(tmp_path: Path) -> None:
    root = make_synthetic("pascal", tmp_path / "d", **TINY)
    label = root / "SegmentationClassAug" / "val_000000.png"
    stamp = label.stat().st_mtime_ns
    assert make_synthetic("pascal", root, **TINY) == root
    assert label.stat().st_mtime_ns == stamp  # same parameters: reused, not rewritten
    make_synthetic("pascal", root, **{**TINY, "n_val": 21})
    assert len((root / "lists" / "val.txt").read_text().splitlines()) == 21
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match=r"not empty and holds no synthetic\.json"):
        make_synthetic("pascal", tmp_path / "busy", **TINY)
    with pytest.raises(ValueError, match=r"n_train=19, n_val=20: each must be >= 20"):
        make_synthetic("pascal", tmp_path / "e", **{**TINY, "n_train": 19})
    with pytest.raises(ValueError, match=r"layout 'voc'"):
        make_synthetic("voc", tmp_path / "e")


def test_coco_layout_and_converter(tiny_coco: Path) -> None:
    root = tiny_coco
    for split in ("train", "val"):
        doc = json.loads((root / "annotations" / f"instances_{split}2014.json").read_text())
        assert [c["id"] for c in doc["categories"]] == list(COCO_CATEGORY_IDS)
        assert len(doc["categories"]) == 80 and max(COCO_CATEGORY_IDS) == 90
        assert len(doc["images"]) == 80
        kinds = {
            "polygon" if isinstance(a["segmentation"], list) else type(a["segmentation"]["counts"]).__name__
            for a in doc["annotations"]
        }
        assert kinds == {"polygon", "str", "list"}  # polygons, compressed RLE (rings), uncompressed crowd RLE
        assert any(a["iscrowd"] for a in doc["annotations"])
        for im in doc["images"]:
            assert (root / f"{split}2014" / im["file_name"]).is_file()
        # the PNG labels are the converter's output for this JSON
        im = doc["images"][5]
        anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
        stem = Path(im["file_name"]).stem
        got = read_label(root / "annotations" / f"{split}2014" / f"{stem}.png", 80)
        expected = coco_semantic_label(anns, im["height"], im["width"], coco_category_map(doc["categories"]))
        assert np.array_equal(got, expected)
    train_ids = {p.stem[-12:] for p in (root / "train2014").glob("*.jpg")}
    val_ids = {p.stem[-12:] for p in (root / "val2014").glob("*.jpg")}
    assert len(train_ids) == 80 and not train_ids & val_ids
    thr = coverage_min_pixels(64)
    for fold, split, coco_split in itertools.product(
        range(4), ("train", "val"), ("interleaved", "contiguous")
    ):
        lst = build_list(
            FoldSpec("coco", fold, coco_split=coco_split),
            root,
            split,
            min_pixels=thr,
            progress=False,
            workers=0,
        )
        assert lst.empty_classes() == [], (fold, split, coco_split)


def test_default_pascal_is_fast_and_fills_pools_at_2048(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    root = make_synthetic("pascal", tmp_path / "default")
    elapsed = time.perf_counter() - t0
    assert elapsed < 15, f"default synthetic Pascal took {elapsed:.1f}s"
    assert len(list((root / "JPEGImages").glob("*.jpg"))) == 360
    sizes = []
    for split in ("train", "val"):
        for fold in range(4):
            lst = build_list(
                FoldSpec("synthetic", fold), root, split, progress=False, workers=0
            )  # real 2048 threshold
            assert lst.empty_classes() == []
            sizes += [len(v) for v in lst.by_class.values()]
    assert min(sizes) >= 6  # enough for 5-shot episodes (query + 5 distinct supports)
    # most object occurrences exceed 2048 pixels at the default size
    big = total = 0
    for p in (root / "SegmentationClassAug").glob("*.png"):
        counts = np.bincount(read_label(p, 20).ravel(), minlength=256)[1:21]
        total += int((counts > 0).sum())
        big += int((counts >= 2048).sum())
    assert big / total > 0.6


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = synthetic.main(
        [
            "--layout",
            "pascal",
            "--root",
            str(tmp_path / "s"),
            "--n-train",
            "20",
            "--n-val",
            "20",
            "--size",
            "64",
        ]
    )
    assert rc == 0
    assert "use dataset 'synthetic'" in capsys.readouterr().out
