"""The own-dataset folder layout: reader API, full check, CLI summary, refusals that change nothing, --make-folds."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from svfseg.data.folder_layout import FolderLayoutError, read_folder
from svfseg.dataprep import prepare
from svfseg.dataprep.folder_check import check_folder, make_folds, write_default_split
from svfseg.dataprep.val_split import stratified_val_ids

SIZE = (24, 24)
CLASSES = ["cat", "dog", "bird", "fish"]
# id -> {value: pixels}; the rest of the 24x24 label is background
TRAIN = {
    "t1": {1: 10, 3: 5},
    "t2": {2: 20},
    "t3": {3: 7, 255: 4},
    "t4": {4: 3, 1: 2},
    "t5": {},
    "t6": {1: 6},
}
VAL = {"v1": {1: 8, 2: 1}, "v2": {3: 9}, "v3": {4: 4}}
FOLDS = {"0": [1, 2], "1": [3, 4]}


def label_of(counts: dict[int, int], shape: tuple[int, int] = SIZE) -> np.ndarray:
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    pos = 0
    for value, n in counts.items():
        flat[pos : pos + n] = value
        pos += n
    return flat.reshape(shape)


def write_image(path: Path, shape: tuple[int, int] = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((*shape, 3), 90, np.uint8))


def write_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label)


def make_root(root: Path, *, folds: dict[str, list[int]] | None = FOLDS) -> Path:
    for id_, counts in {**TRAIN, **VAL}.items():
        write_image(root / "images" / f"{id_}.jpg")
        write_label(root / "labels" / f"{id_}.png", label_of(counts))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "val.txt").write_text("\n".join(VAL) + "\n")
    if folds is not None:
        (root / "folds.json").write_text(json.dumps(folds))
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "ds")


# ------------------------------------------------------------------------------------------ good folder


def test_good_folder_reads_with_the_runtime_api(root: Path) -> None:
    ds = read_folder(root, check_files=True)
    assert ds.root == root and ds.class_names == tuple(CLASSES) and ds.num_classes == 4
    assert ds.folds == ((1, 2), (3, 4))
    assert ds.train_ids == tuple(TRAIN) and ds.val_ids == tuple(VAL)
    assert ds.pairs("val") == (
        ("images/v1.jpg", "labels/v1.png"),
        ("images/v2.jpg", "labels/v2.png"),
        ("images/v3.jpg", "labels/v3.png"),
    )
    assert ds.image_path("t2") == root / "images" / "t2.jpg"
    assert ds.label_path("t2") == root / "labels" / "t2.png"
    assert ds.novel_classes(1) == (3, 4) and ds.base_classes(1) == (1, 2)
    assert ds.base_classes(0) == (3, 4)
    with pytest.raises(ValueError, match="fold 2 does not exist"):
        ds.novel_classes(2)


def test_good_folder_check_has_exact_counts(root: Path) -> None:
    before = snapshot(root)
    rep = check_folder(root, workers=1)
    assert rep.ok, rep.problems
    # Independent tally from the label spec above.
    for cls in rep.classes:
        for split, spec in (("train", TRAIN), ("val", VAL)):
            images = sum(1 for c in spec.values() if cls.id in c)
            pixels = sum(c.get(cls.id, 0) for c in spec.values())
            assert getattr(cls, f"{split}_images") == images
            assert getattr(cls, f"{split}_pixels") == pixels
        shares = [c[cls.id] / (SIZE[0] * SIZE[1]) for c in TRAIN.values() if cls.id in c]
        assert cls.train_median_area == pytest.approx(float(np.median(shares)), abs=1e-12)
    # cat: 10, 6, 2 px of 576 -> 6/576; bird: 5, 7 -> 6/576; fish: 3 -> 3/576; dog: 20 -> 20/576
    assert [round(c.train_median_area * 576, 6) for c in rep.classes] == [6, 20, 6, 3]
    assert [(c.name, c.train_images, c.val_images) for c in rep.classes] == [
        ("cat", 3, 1),
        ("dog", 1, 1),
        ("bird", 2, 1),
        ("fish", 1, 1),
    ]
    # fold 0 (novel cat, dog): t3, t5 have none of them; t3 holds bird. fold 1: t2, t5, t6; t2 and t6 base.
    assert [(f.novel, f.kept, f.kept_with_base, f.val_images) for f in rep.folds] == [
        ((1, 2), 2, 1, 1),
        ((3, 4), 3, 2, 2),
    ]
    assert rep.pixels["t3"] == (576 - 11, 0, 0, 7, 0)
    assert snapshot(root) == before


def test_palette_label_is_read_as_indices_and_png_images_work(root: Path) -> None:
    im = Image.fromarray(label_of(VAL["v2"]), mode="P")
    im.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0, 0, 0, 200, 50, 50, 50] + [0] * 753)
    im.save(root / "labels" / "v2.png")
    (root / "images" / "t2.jpg").unlink()
    write_image(root / "images" / "t2.png")
    rep = check_folder(root, workers=1)
    assert rep.ok, rep.problems
    assert rep.classes[2].val_pixels == 9
    assert rep.dataset is not None and rep.dataset.pairs("train")[1] == ("images/t2.png", "labels/t2.png")


def test_cli_summary(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare.main(["folder", str(root), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 classes, 6 train / 3 val images, 2 fold(s)" in out
    lines = out.splitlines()
    assert lines[1].split() == ["id", "class", "train", "img", "val", "img", "train", "px", "median", "area"]
    assert lines[2].split() == ["1", "cat", "3", "1", "18", "1.0%"]  # 10 + 2 + 6 px; median 6 of 576
    assert lines[3].split() == ["2", "dog", "1", "1", "20", "3.5%"]
    assert "3 of 4 classes cover a median of under 2% of their training images" in out  # not dog
    assert (
        "fold 0: novel [1 cat, 2 dog]; the leakage filter keeps 2 training images (1 with a base class)"
        in out
    )
    assert (
        "fold 1: novel [3 bird, 4 fish]; the leakage filter keeps 3 training images (2 with a base class)"
        in out
    )
    assert "ok: the folder follows the layout" in out


def test_many_images_are_checked_in_parallel(tmp_path: Path) -> None:
    root = make_root(tmp_path / "big")
    train = list(TRAIN)
    for k in range(80):
        id_ = f"x{k:03d}"
        write_image(root / "images" / f"{id_}.jpg")
        write_label(root / "labels" / f"{id_}.png", label_of({1 + k % 4: k + 1}))
        train.append(id_)
    (root / "train.txt").write_text("\n".join(train) + "\n")
    rep = check_folder(root, workers=2)
    assert rep.ok, rep.problems
    extra = {c: sum(1 for k in range(80) if 1 + k % 4 == c) for c in range(1, 5)}
    assert [c.train_images for c in rep.classes] == [3 + extra[1], 1 + extra[2], 2 + extra[3], 1 + extra[4]]


# ------------------------------------------------------------------------------------------ bad folders


def _rm(name: str) -> Callable[[Path], None]:
    return lambda r: (r / name).unlink()


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda r: (r / name).write_text(text)


def _append(name: str, text: str) -> Callable[[Path], None]:
    return lambda r: (r / name).write_text((r / name).read_text() + text)


def _label(id_: str, label: np.ndarray) -> Callable[[Path], None]:
    return lambda r: write_label(r / "labels" / f"{id_}.png", label)


def _extra_pair(r: Path) -> None:
    write_image(r / "images" / "x.jpg")
    write_label(r / "labels" / "x.png", label_of({1: 3}))


BAD = {
    "missing classes.txt": (_rm("classes.txt"), "classes.txt does not exist"),
    "duplicate class name": (
        _write("classes.txt", "cat\ndog\ncat\nfish\n"),
        "classes.txt line 3: class name 'cat' repeats line 1",
    ),
    "empty class line": (_write("classes.txt", "cat\n\nbird\nfish\n"), "classes.txt line 2 is empty"),
    "label of other size": (
        _label("t2", label_of({2: 20}, (20, 24))),
        "labels/t2.png is 24x20 (WxH) but its image images/t2.jpg is 24x24",
    ),
    "label value C+1": (
        _label("t1", label_of({5: 3})),
        "labels/t1.png has values [5] (3 pixels) outside {0..4, 255}",
    ),
    "label value 254": (_label("t6", label_of({254: 2})), "labels/t6.png has values [254] (2 pixels)"),
    "colour label": (
        lambda r: cv2.imwrite(str(r / "labels" / "t1.png"), np.zeros((*SIZE, 3), np.uint8)),
        "labels/t1.png is a 8-bit RGB PNG",
    ),
    "16-bit label": (
        lambda r: cv2.imwrite(str(r / "labels" / "t1.png"), np.zeros(SIZE, np.uint16)),
        "labels/t1.png is a 16-bit grey PNG",
    ),
    "image without label": (_rm("labels/t5.png"), "images/t5.jpg has no label labels/t5.png"),
    "label without image": (_rm("images/t5.jpg"), "labels/t5.png has no image images/t5"),
    "id in train and val": (
        _append("val.txt", "t1\n"),
        "val.txt line 4: id 't1' is also in train.txt (line 1)",
    ),
    "id listed twice": (
        _append("train.txt", "t2\n"),
        "train.txt line 7: id 't2' is listed again (first on line 2)",
    ),
    "id listed but missing": (_append("val.txt", "v9\n"), "val.txt lists id 'v9' but images/v9"),
    "id with extension": (_append("val.txt", "v1.jpg\n"), "val.txt line 4: id 'v1.jpg' ends with '.jpg'"),
    "files not listed": (_extra_pair, "id 'x' (images/ or labels/) is in neither train.txt nor val.txt"),
    "empty val list": (_write("val.txt", "\n"), "val.txt lists no id"),
    "missing train.txt": (_rm("train.txt"), "train.txt does not exist"),
    "folds overlapping": (
        _write("folds.json", '{"0": [1, 2], "1": [2, 3, 4]}'),
        'folds.json fold "1": class 2 is also in fold "0"',
    ),
    "empty fold": (_write("folds.json", '{"0": [1, 2, 3, 4], "1": []}'), 'folds.json fold "1" is empty'),
    "fold key gap": (
        _write("folds.json", '{"0": [1, 2], "2": [3, 4]}'),
        "folds.json: fold keys ['0', '2'] are not \"0\"..\"1\" (missing ['1'], unexpected ['2'])",
    ),
    "novel class absent from val": (
        _label("v3", label_of({})),
        "folds.json fold \"1\": novel class 4 ('fish') occurs in no label of val.txt's images",
    ),
    "folds.json not JSON": (_write("folds.json", "{0: [1, 2]}"), "folds.json is not valid JSON"),
    "folds.json a list": (_write("folds.json", "[[1, 2]]"), "folds.json holds a JSON list"),
    "fold class out of range": (
        _write("folds.json", '{"0": [1, 5], "1": [0]}'),
        'folds.json fold "0": class id 5 is out of range 1..4',
    ),
    "fold value not ints": (
        _write("folds.json", '{"0": ["1"]}'),
        "folds.json fold \"0\": ['1'] is not a list",
    ),
    "missing folds.json": (_rm("folds.json"), "folds.json does not exist"),
    "non-image file as image": (
        _write("images/t3.jpg", "not an image\n"),
        "images/t3.jpg is not a readable image",
    ),
    "truncated jpeg": (
        lambda r: (r / "images" / "t3.jpg").write_bytes((r / "images" / "t3.jpg").read_bytes()[:-2]),
        "images/t3.jpg is a truncated JPEG",
    ),
    "stray file in images": (
        _write("images/notes.txt", "x"),
        "images/notes.txt is not a .jpg/.jpeg/.png file",
    ),
    "two images for one id": (lambda r: write_image(r / "images" / "t1.png"), "id 't1' has 2 images"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_folder_is_refused_naming_the_file_and_left_unchanged(
    case: str, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mutate, expected = BAD[case]
    mutate(root)
    before = snapshot(root)
    rep = check_folder(root, workers=1)
    assert not rep.ok and rep.dataset is None
    assert any(expected in p for p in rep.problems), rep.problems
    with pytest.raises(FolderLayoutError) as err:
        rep.raise_if_bad()
    assert expected in str(err.value)
    assert prepare.main(["folder", str(root), "--workers", "1"]) == 1
    assert expected in capsys.readouterr().out
    assert snapshot(root) == before


def test_all_problems_are_listed_at_once(root: Path) -> None:
    (root / "classes.txt").write_text("cat\ndog\ncat\nfish\n")
    (root / "val.txt").write_text("v1\nv2\nv3\nv9\n")
    (root / "folds.json").write_text('{"0": [1], "2": [3]}')
    with pytest.raises(FolderLayoutError) as err:
        read_folder(root)
    text = str(err.value)
    assert "classes.txt line 3" in text and "fold keys" in text and "2 problem(s)" in text
    # the file check adds the missing files of v9
    with pytest.raises(FolderLayoutError, match=r"val\.txt lists id 'v9'") as err:
        read_folder(root, check_files=True)
    assert len(err.value.problems) == 3


# ------------------------------------------------------------------------------------------ --make-folds


def test_make_folds_rule() -> None:
    assert make_folds({1: 3, 2: 1, 3: 2, 4: 1}, 3) == [[1, 4], [3], [2]]
    assert make_folds({5: 10, 6: 10, 7: 9}, 1) == [[5, 6, 7]]
    with pytest.raises(ValueError, match=r"need 1\.\.3"):
        make_folds({5: 10, 6: 10, 7: 9}, 4)


def test_make_folds_writes_the_documented_assignment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path / "ds", folds=None)
    assert prepare.main(["folder", str(root), "--make-folds", "3", "--workers", "1"]) == 0
    # train images: cat 3, bird 2, dog 1, fish 1 -> order cat, bird, dog, fish -> dealt over 3 folds
    assert json.loads((root / "folds.json").read_text()) == {"0": [1, 4], "1": [3], "2": [2]}
    assert "ok: the folder follows the layout" in capsys.readouterr().out
    before = snapshot(root)
    assert prepare.main(["folder", str(root), "--make-folds", "2"]) == 1
    assert (
        "folds.json exists; --make-folds does not replace it unless you pass --force"
        in capsys.readouterr().out
    )
    assert snapshot(root) == before
    assert prepare.main(["folder", str(root), "--make-folds", "2", "--force", "--workers", "1"]) == 0
    assert json.loads((root / "folds.json").read_text()) == {"0": [1, 2], "1": [3, 4]}


def test_make_folds_leaves_classes_without_val_images_base(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path / "ds", folds=None)
    write_label(root / "labels" / "v3.png", label_of({}))  # fish is in no val label
    assert prepare.main(["folder", str(root), "--make-folds", "2", "--workers", "1"]) == 0
    assert json.loads((root / "folds.json").read_text()) == {"0": [1, 2], "1": [3]}
    assert "classes [4] occur in no val label" in capsys.readouterr().out


def test_make_folds_refuses_a_bad_folder_and_writes_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path / "ds", folds=None)
    (root / "labels" / "t1.png").unlink()
    before = snapshot(root)
    assert prepare.main(["folder", str(root), "--make-folds", "2", "--workers", "1"]) == 1
    assert snapshot(root) == before


# ------------------------------------------------------------------------------------------ --make-split


def _sha_order(ids: list[str], seed: str) -> list[str]:
    return sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())


def test_stratified_split_rule() -> None:
    ids = [f"p{k}" for k in range(8)] + ["r1", "r2"]
    present = np.zeros((10, 2), bool)
    present[8:, 0] = True  # the rare class: r1, r2
    present[:8, 1] = True  # the common class: p0..p7
    val = stratified_val_ids(present, ids, val_fraction=0.2, min_val=2, seed="s")
    # rare first: both its images; common: max(2, ceil(0.2 x 8)) = 2, the first two in sha256("s:id") order;
    # then val holds 4 >= round(0.2 x 10) = 2, so nothing is added
    common = _sha_order(ids[:8], "s")[:2]
    assert val == sorted(["r1", "r2", *common], key=ids.index)
    # a class in one image, min_val 1: that image, then the seeded order fills val to round(0.5 x 10) = 5
    one = np.zeros((10, 1), bool)
    one[3, 0] = True
    val = stratified_val_ids(one, ids, val_fraction=0.5, min_val=1, seed="t")
    fill = [i for i in _sha_order(ids, "t") if i != "p3"][:4]
    assert val == sorted(["p3", *fill], key=ids.index)


def test_make_split_writes_a_stratified_split_then_folds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path / "ds", folds=None)
    (root / "train.txt").unlink()
    (root / "val.txt").unlink()
    args = ["folder", str(root), "--make-split", "0.3", "--min-val", "1", "--min-pixels", "3"]
    assert prepare.main([*args, "--make-folds", "2", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    train = (root / "train.txt").read_text().split()
    val = (root / "val.txt").read_text().split()
    assert sorted(train + val) == sorted([*TRAIN, *VAL]) and not set(train) & set(val)
    # every class covering >= 3 pixels somewhere has a val image where it does; fish (value 4) covers 3
    # pixels in t4 and 4 in v3; round(0.3 x 9) = 3 val images at least
    for value in (1, 2, 3, 4):
        assert any({**TRAIN, **VAL}[i].get(value, 0) >= 3 for i in val), value
    assert len(val) >= 3
    assert f"wrote {root / 'train.txt'} ({len(train)} ids) and {root / 'val.txt'} ({len(val)} ids)" in out
    assert "ok: the folder follows the layout" in out and (root / "folds.json").is_file()
    # the same command again is refused and changes nothing; with --force it writes the same bytes
    before = snapshot(root)
    assert prepare.main([*args, "--workers", "1"]) == 1
    assert "train.txt and val.txt exist(s); --make-split does not replace them" in capsys.readouterr().out
    assert snapshot(root) == before
    assert prepare.main([*args, "--force", "--workers", "1"]) == 0
    assert snapshot(root) == before


def test_make_split_refuses_a_split_with_no_training_image(tmp_path: Path) -> None:
    root = make_root(tmp_path / "ds", folds=None)
    (root / "train.txt").unlink()
    (root / "val.txt").unlink()
    (root / "images" / "t5.jpg").unlink()  # the one image without a class
    (root / "labels" / "t5.png").unlink()
    before = snapshot(root)
    # min_val 6: every class (in 2 to 4 images) takes all its images
    with pytest.raises(FolderLayoutError, match=r"would put all 8 images in val\.txt .*lower --min-val"):
        write_default_split(root, 0.2, min_pixels=1, min_val=6, workers=1)
    assert snapshot(root) == before
    with pytest.raises(FolderLayoutError, match=r"--make-split 1\.5: the validation fraction is between 0"):
        write_default_split(root, 1.5, workers=1)
