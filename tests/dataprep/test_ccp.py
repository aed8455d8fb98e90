"""The Clothing Co-Parsing converter against the public release's own files (read from a local copy).

The data is not in the repository: set SVFSEG_CCP_SRC to a clone of github.com/bearpaw/clothing-co-parsing
(CI does); without it, a shared data copy next to the checkout is used when there is one, else the tests skip.
Expected values are computed here from the .mat files with scipy, independently of svfseg.dataprep.ccp.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from svfseg.data.folder_layout import read_folder
from svfseg.dataprep import prepare
from svfseg.dataprep.folder_check import check_folder
from svfseg.dataprep.val_split import stratified_val_ids
from tests.helpers.data import env_folder

REPO = Path(__file__).resolve().parents[2]
DESIGN = json.loads((REPO / "src" / "svfseg" / "resources" / "ccp" / "design.json").read_text())
IDS = [f"{i:04d}" for i in range(1, 1005)]
SKIP = "CCP data not found: clone github.com/bearpaw/clothing-co-parsing and set SVFSEG_CCP_SRC to the clone"


@pytest.fixture(scope="module")
def src() -> Path:
    path = env_folder("SVFSEG_CCP_SRC", "label_list.mat")
    if path is None:
        pytest.skip(SKIP)
    return path


@pytest.fixture(scope="module")
def names(src: Path) -> list[str]:
    return [str(x[0]) for x in scipy.io.loadmat(src / "label_list.mat")["label_list"].ravel()]


def _gt(src: Path, id_: str) -> np.ndarray:
    return scipy.io.loadmat(src / "annotations" / "pixel-level" / f"{id_}.mat")["groundtruth"]


@pytest.fixture(scope="module")
def hists(src: Path) -> np.ndarray:
    """(1004, 59) pixel counts of every original label value per photo."""
    return np.array([np.bincount(_gt(src, i).ravel(), minlength=59) for i in IDS])


@pytest.fixture(autouse=True)
def _no_env_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SVFSEG_CCP_SRC", raising=False)


def _subset(hists: np.ndarray, n: int) -> list[str]:
    """n ids: val photos covering every class (greedy, most new classes first), then train photos."""
    labels = [c["label"] for c in DESIGN["classes"]]
    val = [k for k, i in enumerate(IDS) if i in set(DESIGN["split"]["val"])]
    todo, chosen = set(labels), []
    while todo:
        k = max(val, key=lambda k: (len(todo & set(np.flatnonzero(hists[k]).tolist())), -k))
        chosen.append(k)
        todo -= set(np.flatnonzero(hists[k]).tolist())
    train = [k for k, i in enumerate(IDS) if i not in set(DESIGN["split"]["val"])]
    chosen += train[: n - len(chosen)]
    assert len(chosen) == n
    return sorted(IDS[k] for k in chosen)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ the design


def test_design_follows_its_documented_rules(names: list[str], hists: np.ndarray) -> None:
    background = {"null", "skin", "hair"}
    assert [names[v] for v in DESIGN["background_labels"]] == ["null", "hair", "skin"]
    frac = hists / hists.sum(1, keepdims=True)
    wide = (frac >= 0.005).sum(0)
    expected = [v for v, n in enumerate(names) if n not in background and wide[v] >= 20]
    assert [(c["id"], c["label"], c["name"]) for c in DESIGN["classes"]] == [
        (k + 1, v, names[v]) for k, v in enumerate(expected)
    ]
    assert len(expected) == 31 and names[expected[0]] == "accessories"
    assert {names[v]: int(wide[v]) for v in expected}["shoes"] == 648
    assert {names[v]: int(wide[v]) for v in expected}["loafers"] == 21
    assert [x["label"] for x in DESIGN["ignored_labels"]] == [
        v for v, n in enumerate(names) if n not in background and v not in expected
    ]
    # split: every class keeps max(6, ceil(20 %)) of its photos (>= 2048 px) in val
    val = set(DESIGN["split"]["val"])
    assert len(val) == 209 and val <= set(IDS)
    for v in expected:
        photos = [i for k, i in enumerate(IDS) if hists[k, v] >= 2048]
        assert sum(i in val for i in photos) >= max(6, math.ceil(0.2 * len(photos))), names[v]
    # folds: disjoint, every class novel once, sizes 8/8/8/7
    folds = [DESIGN["folds"][str(k)] for k in range(4)]
    assert sorted(c for f in folds for c in f) == list(range(1, 32))
    assert sorted(len(f) for f in folds) == [7, 8, 8, 8]
    # the leakage filter's counts, recomputed from the labels
    train = [k for k, i in enumerate(IDS) if i not in val]
    for k, fold in enumerate(folds):
        novel = [expected[c - 1] for c in fold]
        base = [v for v in expected if v not in novel]
        keep = [t for t in train if not hists[t, novel].any()]
        stats = DESIGN["filter"][k]
        assert stats["kept"] == len(keep)
        assert stats["kept_with_base_pixel"] == sum(1 for t in keep if hists[t, base].any())
        assert stats["kept_with_base_min_pixels"] == sum(1 for t in keep if (hists[t, base] >= 2048).any())
    assert [s["kept"] for s in DESIGN["filter"]] == [249, 247, 246, 148]


def test_the_shared_split_rule_gives_the_committed_ccp_split(names: list[str], hists: np.ndarray) -> None:
    """The rule moved from the CCP converter to ``dataprep.val_split`` (``prepare folder --make-split``
    uses it too); the design file, computed by the converter's own copy before, is its golden output."""
    rule = DESIGN["split"]
    labels = [c["label"] for c in DESIGN["classes"]]
    val = stratified_val_ids(
        hists[:, labels] >= rule["min_pixels"],
        IDS,
        val_fraction=rule["val_fraction"],
        min_val=rule["min_val"],
        seed=rule["seed"],
    )
    assert val == rule["val"] and len(val) == 209


def test_manifest_covers_the_files_used(src: Path) -> None:
    lines = (REPO / "src" / "svfseg" / "resources" / "ccp" / "manifest.sha256").read_text().splitlines()
    sums = dict(reversed(line.split("  ", 1)) for line in lines)
    assert len(sums) == 2 + 2 * 1004
    for name in ("label_list.mat", "LICENSE", "photos/0517.jpg", "annotations/pixel-level/1004.mat"):
        assert sums[name] == hashlib.sha256((src / name).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ conversion


def _expected_label(gt: np.ndarray, names: list[str], classes: list[str]) -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    for v, n in enumerate(names):
        lut[v] = classes.index(n) + 1 if n in classes else 0 if n in ("null", "skin", "hair") else 255
    return lut[gt]


def test_convert_subset_matches_the_mat_files(
    tmp_path: Path, src: Path, names: list[str], hists: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _subset(hists, 40)
    out = tmp_path / "ccp"
    assert prepare.main(["ccp", "--src", str(src), "--out", str(out), "--ids", *ids, "--workers", "2"]) == 0
    assert (
        "fold 3: novel [jumper, leggings, romper, shoes, suit, sweatshirt, vest]" in capsys.readouterr().out
    )
    assert sorted(os.listdir(tmp_path)) == ["ccp"]  # no temporary folder left
    classes = (out / "classes.txt").read_text().splitlines()
    assert classes == [c["name"] for c in DESIGN["classes"]]
    val = set(DESIGN["split"]["val"])
    ds = read_folder(out, check_files=True)
    assert ds.val_ids == tuple(i for i in ids if i in val)
    assert ds.train_ids == tuple(i for i in ids if i not in val)
    assert json.loads((out / "folds.json").read_text()) == DESIGN["folds"]
    assert (out / "LICENSE").read_bytes() == (src / "LICENSE").read_bytes()
    for id_ in ids:
        assert (out / "images" / f"{id_}.jpg").read_bytes() == (src / "photos" / f"{id_}.jpg").read_bytes()
        label = cv2.imread(str(out / "labels" / f"{id_}.png"), cv2.IMREAD_UNCHANGED)
        assert label.dtype == np.uint8 and label.ndim == 2
        np.testing.assert_array_equal(label, _expected_label(_gt(src, id_), names, classes))
    rep = check_folder(out, workers=1)
    assert rep.ok, rep.problems
    rows = {i: k for k, i in enumerate(IDS)}
    for cls in rep.classes:
        v = names.index(cls.name)
        for split, split_ids in (("train", ds.train_ids), ("val", ds.val_ids)):
            assert getattr(cls, f"{split}_images") == sum(hists[rows[i], v] > 0 for i in split_ids)
            assert getattr(cls, f"{split}_pixels") == sum(int(hists[rows[i], v]) for i in split_ids)
        shares = [hists[rows[i], v] / hists[rows[i]].sum() for i in ds.train_ids if hists[rows[i], v] > 0]
        assert cls.train_median_area == pytest.approx(float(np.median(shares)) if shares else 0.0, abs=1e-12)


def _copy_subset(src: Path, dst: Path, ids: list[str]) -> None:
    for name in ["label_list.mat", "LICENSE"] + [
        n for i in ids for n in (f"photos/{i}.jpg", f"annotations/pixel-level/{i}.mat")
    ]:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, dst / name)


def test_existing_out_and_a_corrupt_source_are_refused(
    tmp_path: Path, src: Path, hists: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _subset(hists, 24)
    copy = tmp_path / "copy"
    _copy_subset(src, copy, ids)
    out = tmp_path / "data" / "ccp"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    args = ["ccp", "--src", str(copy), "--out", str(out), "--ids", *ids, "--workers", "1"]
    assert prepare.main(args) == 1
    assert "exists; remove it or pass --force" in capsys.readouterr().out
    assert _snapshot(out) == {"keep.txt": b"mine"}
    bad = copy / "annotations" / "pixel-level" / f"{ids[3]}.mat"
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert prepare.main([*args, "--force"]) == 1
    text = capsys.readouterr().out
    assert f"annotations/pixel-level/{ids[3]}.mat from {copy} has sha256" in text
    assert "nothing written" in text
    assert _snapshot(out) == {"keep.txt": b"mine"} and sorted(os.listdir(out.parent)) == ["ccp"]
    shutil.copyfile(src / "annotations" / "pixel-level" / f"{ids[3]}.mat", bad)
    assert prepare.main([*args, "--force"]) == 0
    assert not (out / "keep.txt").exists() and check_folder(out, workers=1).ok
    assert sorted(os.listdir(out.parent)) == ["ccp"]


# ------------------------------------------------------------------------------------------ download


def _archive(src: Path, path: Path, ids: list[str], corrupt: str | None = None) -> dict[str, str]:
    """A code-host style zip (members under clothing-co-parsing-master/); returns the true sha256s."""
    sums = {}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("clothing-co-parsing-master/README.md", "readme")
        for name in ["label_list.mat", "LICENSE"] + [
            n for i in ids for n in (f"photos/{i}.jpg", f"annotations/pixel-level/{i}.mat")
        ]:
            data = (src / name).read_bytes()
            sums[name] = hashlib.sha256(data).hexdigest()
            if name == corrupt:
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            zf.writestr(f"clothing-co-parsing-master/{name}", data)
    return sums


def test_download_is_verified_member_by_member(
    tmp_path: Path,
    src: Path,
    hists: np.ndarray,
    server: tuple[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    base, www = server
    ids = _subset(hists, 36)
    sums = _archive(src, www / "good.zip", ids)
    _archive(src, www / "bad.zip", ids, corrupt=f"photos/{ids[-1]}.jpg")
    manifest = tmp_path / "manifest.sha256"
    manifest.write_text("".join(f"{h}  {n}\n" for n, h in sums.items()))
    work = tmp_path / "data"
    common = ["--manifest", str(manifest), "--ids", *ids, "--workers", "2"]
    out = work / "ccp"
    assert prepare.main(["ccp", "--url", f"{base}/bad.zip", "--out", str(out), *common]) == 1
    text = capsys.readouterr().out
    assert f"photos/{ids[-1]}.jpg from archive" in text and "has sha256" in text
    assert not out.exists() and os.listdir(work) == []  # no archive, no half folder
    assert prepare.main(["ccp", "--url", f"{base}/good.zip", "--out", str(out), *common]) == 0
    assert sorted(os.listdir(work)) == ["ccp"]
    rep = check_folder(out, workers=1)
    assert rep.ok, rep.problems
    assert sorted(p.stem for p in (out / "labels").iterdir()) == ids
    assert (out / "images" / f"{ids[0]}.jpg").read_bytes() == (src / "photos" / f"{ids[0]}.jpg").read_bytes()


def test_unreachable_download_is_refused(
    tmp_path: Path, server: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base, _ = server
    out = tmp_path / "data" / "ccp"
    assert prepare.main(["ccp", "--url", f"{base}/missing.zip", "--out", str(out), "--ids", "0001"]) == 1
    assert "could not download the CCP release" in capsys.readouterr().out
    assert not out.exists() and os.listdir(out.parent) == []
