"""List building (threshold, leakage filter, pools), caching, BAM/SVF import/export and error messages."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from svfseg.data import io as data_io
from svfseg.data.fold import FoldSpec
from svfseg.data.io import DataFileError, MissingDataError
from svfseg.data.layouts import default_source, get_layout, relativize
from svfseg.data.lists import __main__ as lists_cli
from svfseg.data.lists import label_index
from svfseg.data.lists.bam_format import export_lists, import_lists
from svfseg.data.lists.selection import FewShotList, build_list, select_pairs
from tests.helpers.data import label_with, write_jpeg, write_pascal_root, write_png, write_source_list

P = 100  # lowered threshold for the tiny 64x64 labels


def jpg(stem: str) -> str:
    return f"JPEGImages/{stem}.jpg"


def png(stem: str) -> str:
    return f"SegmentationClassAug/{stem}.png"


def pair(stem: str) -> tuple[str, str]:
    return jpg(stem), png(stem)


# Pascal fold 0: novel 1-5, base 6-20. Fold 1: novel 6-10.
LABELS = {
    "a_base6": {6: 150, 255: 40},  # base 6 (fold 0); in fold 1 class 6 is novel
    "b_base7_novel1px": {7: 150, 1: 1},  # one novel pixel -> dropped from fold-0 train when filtering
    "c_novel1": {1: 200},  # novel only: never in fold-0 train; fold-0 val pool of 1
    "d_small": {8: P - 1, 9: P},  # class 8 below threshold, class 9 exactly at it
    "e_empty": {0: 10, 255: 50},  # no class at all
    "f_multi": {6: 120, 11: 130, 2: 99},  # 2 is novel (fold 0) but below threshold
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "voc"
    write_pascal_root(r, {k: label_with(v) for k, v in LABELS.items()})
    return r


def build(root: Path, fold: int, split: str, **kw) -> FewShotList:
    kw.setdefault("min_pixels", P)
    kw.setdefault("progress", False)
    kw.setdefault("workers", 0)
    return build_list(FoldSpec("synthetic", fold), root, split, **kw)


def test_fold0_train_filtered_golden(root: Path) -> None:
    lst = build(root, 0, "train")
    assert lst.pairs == (pair("a_base6"), pair("d_small"))  # f_multi has novel pixels of class 2
    assert lst.classes == list(range(6, 21))
    assert lst.by_class[6] == (pair("a_base6"),)
    assert lst.by_class[7] == ()  # its only image held a novel pixel
    assert lst.by_class[8] == ()  # P-1 pixels do not count
    assert lst.by_class[9] == (pair("d_small"),)  # exactly P pixels count (>=)
    assert lst.by_class[11] == ()


def test_fold0_train_unfiltered_keeps_novel_pixels(root: Path) -> None:
    lst = build(root, 0, "train", filter_novel=False)
    assert lst.pairs == (pair("a_base6"), pair("b_base7_novel1px"), pair("d_small"), pair("f_multi"))
    assert lst.by_class[7] == (pair("b_base7_novel1px"),)
    assert lst.by_class[6] == (pair("a_base6"), pair("f_multi"))
    assert lst.by_class[11] == (pair("f_multi"),)
    filtered = build(root, 0, "train")
    assert set(filtered.pairs) <= set(lst.pairs)


def test_fold0_val_uses_novel_classes_without_filter(root: Path) -> None:
    lst = build(root, 0, "val", filter_novel=True)  # ignored for val
    assert lst.classes == [1, 2, 3, 4, 5]
    assert lst.pairs == (pair("c_novel1"),)
    assert lst.by_class == {1: (pair("c_novel1"),), 2: (), 3: (), 4: (), 5: ()}
    assert lst.empty_classes() == [2, 3, 4, 5]


def test_fold1_train_filter_drops_base6_images(root: Path) -> None:
    lst = build(root, 1, "train")
    # fold 1 novel = 6..10: a (6), d (8 px, 9), f (6) hold novel pixels; b (7) too; c has only class 1
    assert lst.pairs == (pair("c_novel1"),)
    assert lst.by_class[1] == (pair("c_novel1"),)


def test_real_threshold_2047_vs_2048(tmp_path: Path) -> None:
    root = tmp_path / "r"
    write_pascal_root(
        root, {"x2047": label_with({3: 2047}), "x2048": label_with({3: 2048}), "y": label_with({12: 2048})}
    )
    lst = build_list(
        FoldSpec("synthetic", 0), root, "val", progress=False, workers=0
    )  # default min_pixels=2048
    assert lst.by_class[3] == (pair("x2048"),)
    assert lst.pairs == (pair("x2048"),)
    train = build_list(FoldSpec("synthetic", 0), root, "train", progress=False, workers=0)
    assert train.pairs == (pair("y"),)


def test_select_pairs_dedupes_and_sorts() -> None:
    counts = {"l2": {1: 5, 3: 9}, "l1": {3: 10}}
    lst = select_pairs(
        [("i2", "l2"), ("i1", "l1"), ("i2", "l2")], counts, [3], [1], filter_novel=True, min_pixels=9
    )
    assert lst.pairs == (("i1", "l1"),)
    lst = select_pairs([("i2", "l2"), ("i1", "l1")], counts, [3], [1], filter_novel=False, min_pixels=9)
    assert lst.pairs == (("i1", "l1"), ("i2", "l2"))
    assert lst.by_class == {3: (("i1", "l1"), ("i2", "l2"))}


def test_fewshotlist_invariants() -> None:
    with pytest.raises(ValueError, match="sorted and unique"):
        FewShotList((("b", "b"), ("a", "a")), {})
    with pytest.raises(ValueError, match="not in the list"):
        FewShotList((("a", "a"),), {1: (("b", "b"),)})
    lst = FewShotList((("a", "a"),), {2: (), 1: (("a", "a"),)})
    assert FewShotList.from_json(lst.to_json()) == FewShotList((("a", "a"),), {1: (("a", "a"),), 2: ()})


# ------------------------------------------------------------------------------------------------ cache


@pytest.fixture
def read_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = data_io.label_counts

    def counting(path, num_classes, *, hint=None):
        calls.append(Path(path).name)
        return real(path, num_classes, hint=hint)

    monkeypatch.setattr(data_io, "label_counts", counting)
    return calls


def test_cache_hit_reads_no_label_and_folds_share_the_scan(root: Path, read_counter: list[str]) -> None:
    first = build(root, 0, "train")
    assert len(read_counter) == len(LABELS)
    assert (root / ".svfseg_cache").is_dir()
    assert build(root, 0, "train") == first
    assert len(read_counter) == len(LABELS)  # second build: nothing re-read
    build(root, 2, "train")
    build(root, 0, "train", filter_novel=False)
    build(root, 0, "train", min_pixels=P + 1)
    assert len(read_counter) == len(LABELS)  # other folds / settings reuse the per-label counts
    assert all(p.suffix == ".json" for p in (root / ".svfseg_cache").iterdir())


def test_changed_label_is_rescanned_and_changes_the_list(root: Path, read_counter: list[str]) -> None:
    before = build(root, 0, "train")
    assert pair("a_base6") in before.pairs
    label = root / png("a_base6")
    st = label.stat()
    write_png(label, label_with({6: 150, 2: 1}))  # a novel pixel appears
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    read_counter.clear()
    after = build(root, 0, "train")
    assert read_counter == ["a_base6.png"]
    assert pair("a_base6") not in after.pairs


def test_changed_source_list_rebuilds(root: Path, read_counter: list[str]) -> None:
    build(root, 0, "train")
    source = root / "lists" / "train.txt"
    lines = source.read_text().splitlines()
    source.write_text("\n".join(line for line in lines if "a_base6" not in line) + "\n")
    read_counter.clear()
    after = build(root, 0, "train")
    assert after.pairs == (pair("d_small"),)
    assert read_counter == []  # labels unchanged: counts reused, only the selection is redone


def test_explicit_cache_dir_and_corrupt_cache(root: Path, tmp_path: Path, read_counter: list[str]) -> None:
    cache = tmp_path / "cache"
    first = build(root, 0, "val", cache_dir=cache)
    assert not (root / ".svfseg_cache").exists()
    for f in cache.iterdir():
        f.write_text("{not json")
    read_counter.clear()
    assert build(root, 0, "val", cache_dir=cache) == first
    assert len(read_counter) == len(LABELS)  # unreadable cache -> rebuilt from the labels
    # valid JSON with malformed entries is not trusted either
    for f in cache.iterdir():
        data = json.loads(f.read_text())
        if f.name.startswith("counts-"):
            data["labels"] = {key: [1, "x", None] for key in data["labels"]}
        else:
            data["key"] = "stale"
        f.write_text(json.dumps(data))
    read_counter.clear()
    assert build(root, 0, "val", cache_dir=cache) == first
    assert len(read_counter) == len(LABELS)


def test_parallel_scan_equals_serial(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serial = build(root, 0, "train", filter_novel=False, cache_dir=tmp_path / "c1")
    monkeypatch.setattr(label_index, "_SERIAL_BELOW", 1)
    pools: list[int] = []
    real_context = label_index.get_context

    class Spy:
        def Pool(self, n: int):
            pools.append(n)
            return real_context().Pool(n)

    monkeypatch.setattr(label_index, "get_context", Spy)
    parallel = build(root, 0, "train", filter_novel=False, cache_dir=tmp_path / "c2", workers=2)
    assert pools == [2]
    assert parallel == serial


# ------------------------------------------------------------------------------------------------ sources


def test_pascal_standard_lists_are_package_data(tmp_path: Path) -> None:
    layout = get_layout("pascal")
    train = default_source(layout, tmp_path, "train")
    val = default_source(layout, tmp_path, "val")
    assert len(train.pairs) == 5953 and len(set(train.pairs)) == 5953
    assert len(val.pairs) == 1449
    assert train.pairs[0] == ("JPEGImages/2008_000008.jpg", "SegmentationClassAug/2008_000008.png")
    assert not {p[0] for p in train.pairs} & {p[0] for p in val.pairs}  # train and val share no image
    with pytest.raises(MissingDataError, match=r"11906 files .*prepare pascal --voc"):
        build_list(FoldSpec("pascal", 0), tmp_path, "train", progress=False)


def test_coco_source_is_a_sorted_scan(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    for stem, cls in [("COCO_val2014_000000000002", 4), ("COCO_val2014_000000000001", 1)]:
        write_png(root / "annotations" / "val2014" / f"{stem}.png", label_with({cls: 300}))
        write_jpeg(root / "val2014" / f"{stem}.jpg", (64, 64))
    src = default_source(get_layout("coco"), root, "val")
    assert src.pairs == (
        ("val2014/COCO_val2014_000000000001.jpg", "annotations/val2014/COCO_val2014_000000000001.png"),
        ("val2014/COCO_val2014_000000000002.jpg", "annotations/val2014/COCO_val2014_000000000002.png"),
    )
    fold3 = build_list(
        FoldSpec("coco", 3), root, "val", min_pixels=P, progress=False
    )  # interleaved: 4 is novel in fold 3
    assert fold3.by_class[4] == (src.pairs[1],)
    fold0 = build_list(FoldSpec("coco", 0), root, "val", min_pixels=P, progress=False)
    assert fold0.pairs == (src.pairs[0],)
    contiguous = build_list(
        FoldSpec("coco", 0, coco_split="contiguous"), root, "val", min_pixels=P, progress=False
    )
    assert contiguous.pairs == src.pairs
    with pytest.raises(FileNotFoundError, match=r"no label PNGs in .*train2014.*prepare coco --coco"):
        build_list(FoldSpec("coco", 0), root, "train", progress=False)


def test_source_list_with_foreign_absolute_paths(root: Path, tmp_path: Path) -> None:
    prefix = "/root/paddlejob/workspace/env_run/data/VOC2012/"
    src = write_source_list(tmp_path / "foreign.txt", [(prefix + jpg(s), prefix + png(s)) for s in LABELS])
    lst = build(root, 0, "train", source_list=src)
    assert lst == build(root, 0, "train")


# ------------------------------------------------------------------------------------------------ export / import


def test_export_import_round_trip_with_foreign_prefix(root: Path, tmp_path: Path) -> None:
    lst = build(root, 0, "train", filter_novel=False)
    out = tmp_path / "fss_list"
    data_path, sub_path = export_lists(lst, out, 0, "train")
    assert data_path == out / "train" / "data_list_0.txt"
    assert data_path.read_text().splitlines()[0] == f"{jpg('a_base6')} {png('a_base6')}"
    sub = ast.literal_eval(sub_path.read_text())
    assert sub[6] == [list(pair("a_base6")), list(pair("f_multi"))] and sub[8] == []
    assert import_lists(out, 0, "train", root, dataset="synthetic") == lst

    # The SVF repo's files: absolute paths from the authors' machine, tuples in the dict.
    foreign = tmp_path / "foreign"
    prefix = "/root/paddlejob/workspace/env_run/voc/VOC2012/"
    (foreign / "train").mkdir(parents=True)
    (foreign / "train" / "data_list_0.txt").write_text(
        "".join(f"{prefix}{i} {prefix}{lb}\n" for i, lb in lst.pairs)
    )
    as_tuples = {c: [(prefix + i, prefix + lb) for i, lb in v] for c, v in lst.by_class.items()}
    (foreign / "train" / "sub_class_file_list_0.txt").write_text(str(as_tuples))
    assert import_lists(foreign, 0, "train", root) == lst
    assert import_lists(foreign, 0, "train", root, strip_prefix=prefix) == lst
    with pytest.raises(ValueError, match="does not start with strip_prefix"):
        import_lists(foreign, 0, "train", root, strip_prefix="/elsewhere/")
    export_lists(lst, tmp_path / "f1", 1, "train")  # fold-0 classes written as fold 1
    with pytest.raises(ValueError, match=r"class ids .* are not the synthetic fold 1 train classes"):
        import_lists(tmp_path / "f1", 1, "train", root, dataset="synthetic")


def test_import_reports_missing_files(root: Path, tmp_path: Path) -> None:
    lst = build(root, 0, "train", filter_novel=False)
    export_lists(lst, tmp_path / "l", 0, "train")
    (root / jpg("a_base6")).unlink()
    (root / png("f_multi")).unlink()
    with pytest.raises(
        MissingDataError, match=r"2 files named in .*data_list_0.txt are missing.*a_base6.jpg"
    ):
        import_lists(tmp_path / "l", 0, "train", root)
    with pytest.raises(FileNotFoundError, match=r"data_list_3.txt does not exist"):
        import_lists(tmp_path / "l", 3, "train", root)


def test_import_rejects_inconsistent_and_non_literal_files(root: Path, tmp_path: Path) -> None:
    d = tmp_path / "l" / "val"
    d.mkdir(parents=True)
    (d / "data_list_0.txt").write_text(f"{jpg('c_novel1')} {png('c_novel1')}\n")
    (d / "sub_class_file_list_0.txt").write_text("__import__('os').getcwd()")
    with pytest.raises(ValueError, match="not a Python dict literal"):
        import_lists(tmp_path / "l", 0, "val", root)
    (d / "sub_class_file_list_0.txt").write_text(str({1: [pair("a_base6")]}))
    with pytest.raises(ValueError, match="1 pool pairs are not in"):
        import_lists(tmp_path / "l", 0, "val", root)


def test_relativize_shapes() -> None:
    coco = get_layout("coco")
    assert relativize("/x/annotations/coco/annotations/val2014/a.png", coco) == "annotations/val2014/a.png"
    assert relativize("/data/coco/train2014/a.jpg", coco) == "train2014/a.jpg"
    assert relativize("val2014/a.jpg", coco) == "val2014/a.jpg"
    with pytest.raises(ValueError, match="none of the coco layout's known directories"):
        relativize("/data/images/a.jpg", coco)
    with pytest.raises(ValueError, match="inside the dataset root"):
        relativize("../a.jpg", coco)


# ------------------------------------------------------------------------------------------------ errors


def test_missing_root_names_prepare_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"dataset root .*nope does not exist.*prepare coco --coco"):
        build_list(FoldSpec("coco", 0), tmp_path / "nope", "train")
    with pytest.raises(
        FileNotFoundError, match=r"lists/train.txt is missing.*svfseg.dataprep.synthetic --layout pascal"
    ):
        build_list(FoldSpec("synthetic", 0), tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"source list .*none.txt does not exist"):
        build_list(FoldSpec("synthetic", 0), tmp_path, "train", source_list=tmp_path / "none.txt")
    with pytest.raises(ValueError, match=r"dataset='voc' is invalid: choose one of"):
        build_list(FoldSpec("voc", 0), tmp_path, "train")
    with pytest.raises(ValueError, match=r"split='test'"):
        build_list(FoldSpec("synthetic", 0), tmp_path, "test")
    with pytest.raises(ValueError, match=r"min_pixels=0"):
        build_list(FoldSpec("synthetic", 0), tmp_path, "train", min_pixels=0)


def test_missing_images_and_labels_are_counted(root: Path) -> None:
    (root / jpg("c_novel1")).unlink()
    (root / png("d_small")).unlink()
    with pytest.raises(
        MissingDataError, match=r"2 files of the source list are missing.*synthetic --layout pascal"
    ):
        build(root, 0, "train")


def test_malformed_source_line(root: Path) -> None:
    src = root / "lists" / "train.txt"
    src.write_text(src.read_text() + "JPEGImages/only_one.jpg\n")
    with pytest.raises(ValueError, match=r"train.txt:7: expected 'IMAGE LABEL'"):
        build(root, 0, "train")


def test_out_of_range_label_values_name_file_and_values(root: Path) -> None:
    write_png(root / png("e_empty"), label_with({21: 3, 200: 2, 255: 1}))
    with pytest.raises(DataFileError, match=r"e_empty.png has values \[21, 200\] outside \{0..20, 255\}"):
        build(root, 0, "val")


def test_corrupt_image_and_size_mismatch(root: Path) -> None:
    (root / jpg("a_base6")).write_bytes(b"not an image at all")
    with pytest.raises(DataFileError, match=r"a_base6.jpg is corrupt"):
        build(root, 0, "val")
    write_jpeg(root / jpg("a_base6"), (32, 64))
    with pytest.raises(DataFileError, match=r"a_base6.jpg is 64x32 .*a_base6.png is 64x64"):
        build(root, 0, "val")


def test_reader_errors(root: Path, tmp_path: Path) -> None:
    img, lab = data_io.read_sample(root, pair("a_base6"), 20)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert np.array_equal(lab, label_with(LABELS["a_base6"]))
    # truncated JPEG: OpenCV would decode it with a warning only
    good = (root / jpg("b_base7_novel1px")).read_bytes()
    (root / jpg("b_base7_novel1px")).write_bytes(good[: len(good) // 2])
    with pytest.raises(DataFileError, match=r"b_base7_novel1px.jpg is corrupt or truncated"):
        data_io.read_image(root / jpg("b_base7_novel1px"))
    with pytest.raises(
        MissingDataError, match=r"image .*gone.jpg does not exist; prepare the dataset with: CMD"
    ):
        data_io.read_image(root / "gone.jpg", hint="CMD")
    # RGB image saved as a label (a palette PNG reads as colours in OpenCV)
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 2] = 128
    cv2.imwrite(str(tmp_path / "rgb.png"), colour)
    with pytest.raises(DataFileError, match=r"rgb.png is a colour image"):
        data_io.read_label(tmp_path / "rgb.png", 20)
    write_jpeg(root / jpg("e_empty"), (60, 64))
    with pytest.raises(DataFileError, match=r"image .*e_empty.jpg is 64x60.*e_empty.png is 64x64"):
        data_io.read_sample(root, pair("e_empty"), 20)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_builds_all_folds_and_imports(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc = lists_cli.main(
        [
            "--dataset",
            "synthetic",
            "--root",
            str(root),
            "--out",
            str(out),
            "--min-pixels",
            str(P),
            "--no-progress",
        ]
    )
    assert rc == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.txt"))
    assert len(files) == 16 and "val/sub_class_file_list_3.txt" in files
    table = capsys.readouterr().out
    assert "synthetic lists built" in table and "empty pools" in table
    assert import_lists(out, 0, "train", root) == build(root, 0, "train")

    converted = tmp_path / "converted"
    rc = lists_cli.main(
        [
            "--dataset",
            "synthetic",
            "--root",
            str(root),
            "--out",
            str(converted),
            "--import",
            str(out),
            "--folds",
            "0",
        ]
    )
    assert rc == 0
    assert (converted / "train" / "data_list_0.txt").read_text() == (
        out / "train" / "data_list_0.txt"
    ).read_text()
    assert not (converted / "train" / "data_list_1.txt").exists()


def test_summary_compares_with_reference_counts(root: Path, capsys: pytest.CaptureFixture) -> None:
    lst = build(root, 0, "val")
    lists_cli._summary([(0, "val", lst), (1, "val", lst)], "t", {(0, "val"): 1, (1, "val"): 445})
    out = capsys.readouterr().out
    assert "1 ok" in out and "445 DIFFERS" in out
    assert lists_cli.REFERENCE_PASCAL[(2, "train", True)] == 2752


def test_lists_cli_reports_a_missing_root_or_import_folder_in_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "lists"
    rc = lists_cli.main(["--dataset", "pascal", "--root", str(tmp_path / "nowhere"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: dataset root {tmp_path / 'nowhere'} does not exist; create it")
    rc = lists_cli.main(
        ["--dataset", "pascal", "--root", str(tmp_path), "--out", str(out), "--import", str(tmp_path / "x")]
    )
    assert (
        rc == 2 and "data_list_0.txt does not exist; expected the BAM/SVF layout" in capsys.readouterr().err
    )
    assert not out.exists()
