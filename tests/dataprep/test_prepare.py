"""Dataset converters on small inputs in the real formats: SBD .mat, VOC palette PNG, COCO instances JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from pycocotools import mask as mask_utils

from svfseg.data.io import DataFileError, read_label
from svfseg.dataprep import prepare
from svfseg.dataprep.prepare import coco_category_map, coco_semantic_label, prepare_coco, prepare_pascal
from svfseg.dataprep.synthetic import COCO_CATEGORY_IDS
from tests.helpers.data import write_jpeg

# ------------------------------------------------------------------------------------------------ pascal

VOC_ID, SBD_ID = "2007_000033", "2008_000008"  # first lines of val.txt / voc_sbd_merge_noduplicate.txt


def voc_palette_png(path: Path, indices: np.ndarray) -> None:
    """A VOC-style palette PNG: index 255 (void border) is the cream colour (224, 224, 192)."""
    im = Image.fromarray(indices, mode="P")
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [64] * 3 * 251 + [224, 224, 192]
    im.putpalette(palette)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def sbd_mat(path: Path, seg: np.ndarray) -> None:
    """An SBD cls/<id>.mat: struct GTcls with Boundaries, Segmentation, CategoriesPresent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = np.zeros(seg.shape, np.uint8)
    present = np.unique(seg[(seg > 0) & (seg < 255)]).astype(np.uint8)
    scipy.io.savemat(
        path, {"GTcls": {"Boundaries": boundaries, "Segmentation": seg, "CategoriesPresent": present}}
    )


@pytest.fixture
def voc_sbd(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    voc, sbd = tmp_path / "VOC2012", tmp_path / "benchmark_RELEASE" / "dataset"
    voc_label = np.zeros((30, 40), np.uint8)
    voc_label[5:20, 5:25] = 3
    voc_label[4, 4:26] = 255  # void border band
    voc_label[20, 4:26] = 255
    sbd_label = np.zeros((30, 40), np.uint8)
    sbd_label[10:25, 10:35] = 15
    for stem in (VOC_ID, SBD_ID):
        write_jpeg(voc / "JPEGImages" / f"{stem}.jpg", (30, 40))
    voc_palette_png(voc / "SegmentationClass" / f"{VOC_ID}.png", voc_label)
    sbd_mat(sbd / "cls" / f"{VOC_ID}.mat", np.full((30, 40), 7, np.uint8))  # VOC takes precedence
    sbd_mat(sbd / "cls" / f"{SBD_ID}.mat", sbd_label)
    return voc, tmp_path / "benchmark_RELEASE", voc_label, sbd_label


def test_prepare_pascal(voc_sbd, tmp_path: Path) -> None:
    voc, sbd, voc_label, sbd_label = voc_sbd
    out = tmp_path / "out"
    rep = prepare_pascal(voc, sbd, out, progress=False)
    assert (rep.from_voc, rep.from_sbd) == (1, 1)
    got_voc = read_label(out / "SegmentationClassAug" / f"{VOC_ID}.png", 20)
    assert np.array_equal(got_voc, voc_label)  # palette indices, 255 border kept
    assert np.array_equal(read_label(out / "SegmentationClassAug" / f"{SBD_ID}.png", 20), sbd_label)
    assert (out / "JPEGImages").is_symlink() and (out / "JPEGImages" / f"{VOC_ID}.jpg").is_file()
    # one pair of each standard list is present, the rest reported missing
    assert len(rep.missing["val.txt"]) == 2 * 1449 - 2
    assert len(rep.missing["voc_sbd_merge_noduplicate.txt"]) == 2 * 5953 - 2
    assert f"SegmentationClassAug/{VOC_ID}.png" not in rep.missing["val.txt"]


def test_prepare_pascal_cli_reports_incomplete_lists(voc_sbd, tmp_path: Path, capsys) -> None:
    voc, sbd, _, _ = voc_sbd
    out = tmp_path / "cli"
    rc = prepare.main(["pascal", "--voc", str(voc), "--sbd", str(sbd), "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "labels: 1 from VOC SegmentationClass, 1 from SBD" in text
    assert "standard list val.txt: 2896 files missing" in text


def test_prepare_pascal_errors(voc_sbd, tmp_path: Path) -> None:
    voc, sbd, _, _ = voc_sbd
    with pytest.raises(FileNotFoundError, match=r"VOC image folder .*nowhere/JPEGImages does not exist"):
        prepare_pascal(tmp_path / "nowhere", sbd, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match=r"no SBD class labels under .*expected .*cls/\*\.mat"):
        prepare_pascal(voc, voc, tmp_path / "o")
    scipy.io.savemat(
        sbd / "dataset" / "cls" / "2008_000015.mat", {"GTinst": {"Segmentation": np.zeros((2, 2))}}
    )
    with pytest.raises(DataFileError, match=r"2008_000015.mat has no GTcls.Segmentation"):
        prepare_pascal(voc, sbd, tmp_path / "o", progress=False)


def test_voc_rgb_label_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(DataFileError, match=r"x.png has mode RGB"):
        prepare.voc_png_to_label(path)


def test_sbd_out_of_range_values(tmp_path: Path) -> None:
    voc = tmp_path / "VOC2012"
    write_jpeg(voc / "JPEGImages" / "a.jpg", (4, 4))
    sbd_mat(tmp_path / "sbd" / "cls" / "a.mat", np.full((4, 4), 30, np.uint8))
    with pytest.raises(DataFileError, match=r"a.mat has values \[30\] outside \{0..20, 255\}"):
        prepare_pascal(voc, tmp_path / "sbd", tmp_path / "o", progress=False)


# ------------------------------------------------------------------------------------------------ coco


def rect(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    """A polygon that pycocotools fills exactly as columns x0..x1-1, rows y0..y1-1."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.ravel(order="F").tolist()
    runs, cur, n = [], 0, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = v, 1
    runs.append(n)
    return {"size": list(mask.shape), "counts": runs}


H, W = 30, 40


def coco_doc() -> tuple[dict, np.ndarray]:
    """Instances JSON with overlaps, an RLE instance, a crowd region and an image without annotations."""
    crowd = np.zeros((H, W), np.uint8)
    crowd[20:30, 30:40] = 1  # overlaps the big instance (rows 20-24) and background
    blob = np.zeros((H, W), np.uint8)
    blob[26:29, 2:8] = 1
    rle = mask_utils.encode(np.asfortranarray(blob))
    anns = [
        {"id": 1, "image_id": 7, "category_id": 90, "segmentation": rect(0, 0, 40, 25), "iscrowd": 0},  # big
        {
            "id": 2,
            "image_id": 7,
            "category_id": 1,
            "segmentation": rect(5, 5, 10, 10),
            "iscrowd": 0,
        },  # inside big
        {"id": 3, "image_id": 7, "category_id": 44, "segmentation": uncompressed_rle(crowd), "iscrowd": 1},
        {
            "id": 4,
            "image_id": 7,
            "category_id": 13,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            "iscrowd": 0,
        },
        # equal areas, overlapping: the higher annotation id (6) wins
        {"id": 6, "image_id": 7, "category_id": 2, "segmentation": rect(20, 10, 24, 14), "iscrowd": 0},
        {"id": 5, "image_id": 7, "category_id": 3, "segmentation": rect(22, 12, 26, 16), "iscrowd": 0},
        {
            "id": 7,
            "image_id": 7,
            "category_id": 4,
            "segmentation": [[1, 1, 2, 2]],
            "iscrowd": 0,
        },  # degenerate
    ]
    images = [
        {"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "height": H, "width": W},
        {"id": 8, "file_name": "COCO_train2014_000000000008.jpg", "height": H, "width": W},
    ]
    cats = [{"id": c, "name": f"c{c}", "supercategory": "s"} for c in COCO_CATEGORY_IDS]
    # Expected label, built by hand: ids 90 -> 80, 1 -> 1, 13 -> 12, 2 -> 2, 3 -> 3.
    exp = np.zeros((H, W), np.uint8)
    exp[20:30, 30:40] = 255  # crowd first
    exp[0:25, 0:40] = 80  # big instance painted over the crowd
    exp[12:16, 22:26] = 3  # id 5 (equal area, lower id) first
    exp[10:14, 20:24] = 2  # id 6 wins the overlap
    exp[5:10, 5:10] = 1  # small wins over big
    exp[26:29, 2:8] = 12
    return {"images": images, "annotations": anns, "categories": cats}, exp


def write_coco(root: Path, doc: dict, split: str = "train") -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(doc))
    for im in doc["images"]:
        write_jpeg(root / f"{split}2014" / im["file_name"], (im["height"], im["width"]))


def test_category_map_is_ascending_1_to_80() -> None:
    m = coco_category_map([{"id": c} for c in reversed(COCO_CATEGORY_IDS)])
    assert len(m) == 80 and m[1] == 1 and m[11] == 11 and m[13] == 12 and m[90] == 80
    assert list(m.values()) == list(range(1, 81))
    with pytest.raises(ValueError, match="duplicate"):
        coco_category_map([{"id": 1}, {"id": 1}])


def test_coco_overlap_rule_golden() -> None:
    doc, expected = coco_doc()
    cat_map = coco_category_map(doc["categories"])
    got = coco_semantic_label(doc["annotations"], H, W, cat_map)
    assert np.array_equal(got, expected)


def test_prepare_coco_writes_labels_and_links_images(tmp_path: Path) -> None:
    doc, expected = coco_doc()
    src, out = tmp_path / "coco", tmp_path / "out"
    write_coco(src, doc)
    written = prepare_coco(src, out, splits=["train"], progress=False)
    assert written == {"train": 1}  # the image without annotations gets no label
    labels = sorted((out / "annotations" / "train2014").iterdir())
    assert [p.name for p in labels] == ["COCO_train2014_000000000007.png"]
    assert np.array_equal(read_label(labels[0], 80), expected)
    assert (out / "train2014").is_symlink()
    # resume: an existing label is kept with skip_existing, rewritten otherwise
    labels[0].write_bytes(b"stale")
    prepare_coco(src, out, splits=["train"], progress=False, skip_existing=True)
    assert labels[0].read_bytes() == b"stale"
    prepare_coco(src, out, splits=["train"], progress=False)
    assert np.array_equal(read_label(labels[0], 80), expected)


def test_prepare_coco_cli(tmp_path: Path, capsys) -> None:
    doc, _ = coco_doc()
    write_coco(tmp_path / "c", doc, "val")
    rc = prepare.main(
        ["coco", "--coco", str(tmp_path / "c"), "--out", str(tmp_path / "c"), "--splits", "val"]
    )
    assert rc == 0
    assert "val2014: 1 labels" in capsys.readouterr().out
    assert (tmp_path / "c" / "annotations" / "val2014" / "COCO_train2014_000000000007.png").is_file()


def test_prepare_cli_reports_a_missing_release_in_one_line(tmp_path: Path, capsys) -> None:
    """The first command a new user types: a wrong --voc / --coco used to end in a traceback."""
    out = tmp_path / "o"
    rc = prepare.main(
        ["pascal", "--voc", str(tmp_path / "nowhere"), "--sbd", str(tmp_path), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(
        f"error: VOC image folder {tmp_path / 'nowhere' / 'JPEGImages'} does not exist; pass"
    )
    assert prepare.main(["coco", "--coco", str(tmp_path), "--out", str(out), "--splits", "train"]) == 2
    assert "error: " in capsys.readouterr().err and not out.exists()


def test_prepare_coco_errors(tmp_path: Path) -> None:
    (tmp_path / "train2014").mkdir()
    with pytest.raises(FileNotFoundError, match=r"instances_train2014.json does not exist; download"):
        prepare_coco(tmp_path, tmp_path / "o", splits=["train"])
    with pytest.raises(FileNotFoundError, match=r"COCO image folder .*val2014 does not exist"):
        prepare_coco(tmp_path, tmp_path / "o", splits=["val"])
    doc, _ = coco_doc()
    doc["categories"] = doc["categories"][:3]
    write_coco(tmp_path, doc)
    with pytest.raises(DataFileError, match="has 3 categories; COCO-20i needs 80"):
        prepare_coco(tmp_path, tmp_path / "o", splits=["train"], progress=False)
    with pytest.raises(DataFileError, match="category_id 90 is not in the categories list"):
        prepare_coco(tmp_path, tmp_path / "o", splits=["train"], progress=False, expect_classes=None)
    (tmp_path / "annotations" / "instances_train2014.json").write_text("{")
    with pytest.raises(DataFileError, match="is not valid JSON"):
        prepare_coco(tmp_path, tmp_path / "o", splits=["train"])
