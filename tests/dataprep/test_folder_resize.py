"""``prepare resize``: a folder dataset's copy at a working size keeps ids, lists and label values."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from svfseg.data.folder_layout import read_folder
from svfseg.dataprep import prepare
from svfseg.dataprep.folder_resize import RECORD, resize_folder, scaled_min_pixels


def _write_folder(root: Path) -> Path:
    """Three photos in the documented layout, written with cv2 as a user would (one portrait, one landscape,
    one already small)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for id_, (h, w) in {"a": (300, 200), "b": (120, 240), "c": (40, 30)}.items():
        cv2.imwrite(str(root / "images" / f"{id_}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        label = np.zeros((h, w), np.uint8)
        label[h // 4 : h // 2, w // 4 : w // 2] = 1
        label[h // 2 :, w // 2 :] = 2
        label[:3] = 255
        cv2.imwrite(str(root / "labels" / f"{id_}.png"), label)
    (root / "classes.txt").write_text("shirt\nshoes\n")
    (root / "train.txt").write_text("a\nc\n")
    (root / "val.txt").write_text("b\n")
    (root / "folds.json").write_text(json.dumps({"0": [1], "1": [2]}))
    return root


def test_copy_is_at_the_working_size_with_the_same_ids_and_label_values(tmp_path: Path) -> None:
    src = _write_folder(tmp_path / "src")
    out = resize_folder(src, tmp_path / "small", 60, workers=1)
    ds = read_folder(out, check_files=True)
    assert (ds.train_ids, ds.val_ids, ds.class_names) == (("a", "c"), ("b",), ("shirt", "shoes"))
    expected = {"a": (60, 40), "b": (30, 60), "c": (40, 30)}  # long side 60; a small photo is kept
    for id_, hw in expected.items():
        image = cv2.imread(str(out / "images" / f"{id_}.jpg"))
        label = cv2.imread(str(out / "labels" / f"{id_}.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape[:2] == hw and label.shape == hw
        assert set(np.unique(label)) <= {0, 1, 2, 255}  # nearest neighbour: no blended ids
        assert {1, 2} <= set(np.unique(label))
    record = json.loads((out / RECORD).read_text())
    ratios = [(60 * 40) / (300 * 200), (30 * 60) / (120 * 240), 1.0]
    assert record["area_ratio_mean"] == pytest.approx(sum(ratios) / 3)
    assert scaled_min_pixels(2048, out) == round(2048 * sum(ratios) / 3)
    assert scaled_min_pixels(2048, src) == 2048


def test_same_request_is_reused_and_another_refused(tmp_path: Path) -> None:
    src = _write_folder(tmp_path / "src")
    out = resize_folder(src, tmp_path / "small", 60, workers=1)
    stamp = (out / "images" / "a.jpg").stat().st_mtime_ns
    assert resize_folder(src, out, 60, workers=1) == out
    assert (out / "images" / "a.jpg").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="at 60 px; remove it or choose another --out"):
        resize_folder(src, out, 80, workers=1)
    with pytest.raises(ValueError, match="--long-side 8: use at least 16"):
        resize_folder(src, tmp_path / "tiny", 8)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _write_folder(tmp_path / "src")
    out = tmp_path / "cli"
    assert prepare.main(["resize", str(src), "--out", str(out), "--long-side", "100", "--workers", "1"]) == 0
    assert f"dataset.root={out} dataset.min_pixels=" in capsys.readouterr().out
    assert cv2.imread(str(out / "images" / "a.jpg")).shape[:2] == (100, 67)
