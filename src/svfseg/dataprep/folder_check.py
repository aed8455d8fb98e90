"""The full check of a dataset folder (:mod:`svfseg.data.folder_layout`) and its default fold maker.

* :func:`check_folder` is the full check. Beyond :func:`~svfseg.data.folder_layout.read_folder` it decodes
  every label (values, size against its image's header) and counts the classes per split, which gives
  the report that ``python -m svfseg.dataprep.prepare folder ROOT`` prints. It never writes into ROOT.
* :func:`make_folds` is the documented default fold rule behind ``--make-folds K``;
  :func:`write_default_split` writes train.txt / val.txt behind ``--make-split FRACTION``.

Sizes are compared at the displayed (EXIF) orientation, the rule of :mod:`svfseg.data.io`.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from svfseg.data.folder_layout import (
    CLASSES_FILE,
    FOLDS_FILE,
    IMAGE_DIR,
    LABEL_DIR,
    LABEL_SUFFIX,
    SPLIT_FILES,
    FolderDataset,
    FolderLayoutError,
    Parts,
    dataset_of,
    read_parts,
)
from svfseg.data.io import exif_orientation, swaps_sides
from svfseg.data.lists.label_index import default_workers
from svfseg.dataprep.val_split import stratified_val_ids
from svfseg.files import atomic_write_text
from svfseg.labels import IGNORE_INDEX

_SERIAL_BELOW = 64
SMALL_AREA = 0.02  # the report names the classes whose median share of their images is below this
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GREY, _PNG_PALETTE = 0, 3
_PNG_COLOUR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey + alpha", 6: "RGBA"}


# --------------------------------------------------------------------------------------------- checking


def _png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) of PNG bytes; None when they are not a PNG."""
    if len(data) < 26 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height, data[24], data[25]


def _read_label(path: Path, name: str) -> tuple[np.ndarray | None, str | None]:
    """The (H, W) uint8 label at its displayed orientation, or a problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"{name} cannot be read ({exc.strerror or exc})"
    header = _png_header(data)
    if header is None:
        return None, f"{name} is not a PNG file; write labels as single-channel PNGs"
    _, _, depth, colour = header
    if colour not in (_PNG_GREY, _PNG_PALETTE) or depth != 8:
        kind = _PNG_COLOUR_TYPES.get(colour, f"colour type {colour}")
        return None, (
            f"{name} is a {depth}-bit {kind} PNG; labels must be 8-bit single-channel (mode L, or P whose "
            "palette indices are the class ids): save the class-id array with PIL mode 'L' or cv2.imwrite"
        )
    try:
        if colour == _PNG_PALETTE:
            with Image.open(io.BytesIO(data)) as im:
                label = np.array(im, dtype=np.uint8)
        else:
            label = cv2.imdecode(
                np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
            )
    except (OSError, SyntaxError, ValueError) as exc:
        return None, f"{name} is a corrupt PNG ({exc}); re-create it"
    if label is None or label.ndim != 2:
        return None, f"{name} is a corrupt PNG (cannot be decoded); re-create it"
    if swaps_sides(exif_orientation(data)):
        label = label.T
    return label, None


def _image_size(path: Path, name: str) -> tuple[tuple[int, int] | None, str | None]:
    """(height, width) of an image at its displayed orientation, from its header; or a problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"{name} cannot be read ({exc.strerror or exc})"
    if not data:
        return None, f"{name} is empty (0 bytes); re-create it"
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            fmt = im.format
    except (OSError, SyntaxError, ValueError) as exc:
        return None, f"{name} is not a readable image ({exc}); replace it with a JPEG or PNG"
    if fmt not in ("JPEG", "PNG"):
        return None, f"{name} is a {fmt} file; save it as JPEG or PNG"
    if fmt == "JPEG" and b"\xff\xd9" not in data[-4096:]:
        return None, f"{name} is a truncated JPEG (no end marker); re-create it"
    if swaps_sides(exif_orientation(data)):
        width, height = height, width
    return (height, width), None


def _check_pair(task: tuple[str, str, str, int]) -> tuple[str, list[int] | None, list[str]]:
    """One id: (id, pixel counts per value 0..255 or None, problems)."""
    root, id_, image_name, num_classes = task
    base = Path(root)
    label_name = f"{LABEL_DIR}/{id_}{LABEL_SUFFIX}"
    problems: list[str] = []
    size, problem = _image_size(base / image_name, image_name)
    if problem:
        problems.append(problem)
    label, problem = _read_label(base / label_name, label_name)
    if problem:
        problems.append(problem)
        return id_, None, problems
    assert label is not None
    if size is not None and label.shape != size:
        problems.append(
            f"{label_name} is {label.shape[1]}x{label.shape[0]} (WxH) but its image {image_name} is "
            f"{size[1]}x{size[0]}; a label must have the size of its image"
        )
    counts = np.bincount(label.ravel(), minlength=256)
    if num_classes > 0:
        bad = [v for v in np.flatnonzero(counts).tolist() if num_classes < v < IGNORE_INDEX]
        if bad:
            problems.append(
                f"{label_name} has values {bad} ({int(counts[bad].sum())} pixels) outside "
                f"{{0..{num_classes}, 255}}: {CLASSES_FILE} names {num_classes} classes; fix the label "
                "or add the classes"
            )
    return id_, counts.tolist(), problems


def _map(fn: Callable[[Any], Any], tasks: Sequence[Any], workers: int | None) -> list[Any]:
    n = default_workers() if workers is None else workers
    if n <= 1 or len(tasks) < _SERIAL_BELOW:
        return [fn(t) for t in tasks]
    with get_context().Pool(min(n, len(tasks))) as pool:
        return pool.map(fn, tasks, chunksize=max(1, min(32, len(tasks) // (4 * n))))


@dataclass(frozen=True)
class ClassCount:
    """How often class ``id`` occurs: images holding >= 1 pixel of it, and its pixels, per split.

    ``train_median_area``: the median share of its image that the class covers, over the training images
    holding it (0.0 when none does): how many feature cells an object spans at a working size, which the
    report shows because heads on small objects (CCP's) stayed at "all background" in short runs.
    """

    id: int
    name: str
    train_images: int
    val_images: int
    train_pixels: int
    val_pixels: int
    train_median_area: float = 0.0


@dataclass(frozen=True)
class FoldCount:
    """What the leakage filter does to fold ``fold``'s training list.

    ``kept``: training images without a pixel of any novel class of the fold; ``kept_with_base``: those
    holding at least one pixel of a base class; ``val_images``: validation images with a novel class.
    """

    fold: int
    novel: tuple[int, ...]
    kept: int
    kept_with_base: int
    val_images: int


@dataclass(frozen=True)
class FolderReport:
    """The result of :func:`check_folder`: ``problems`` (empty when the folder is good) and the counts."""

    root: Path
    problems: tuple[str, ...]
    dataset: FolderDataset | None
    classes: tuple[ClassCount, ...] = ()
    folds: tuple[FoldCount, ...] = ()
    # id -> pixel count per value 0..C (0 = background), for every label that could be read
    pixels: Mapping[str, tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_bad(self) -> FolderDataset:
        if self.problems or self.dataset is None:
            raise FolderLayoutError(self.root, self.problems)
        return self.dataset


def _scan_labels(parts: Parts, workers: int | None) -> dict[str, list[int]]:
    num = len(parts.class_names) if parts.class_names else 0
    ids = sorted(set(parts.images) & parts.labels)
    tasks = [(str(parts.root), i, f"{IMAGE_DIR}/{parts.images[i][0]}", num) for i in ids]
    counts: dict[str, list[int]] = {}
    for id_, c, problems in _map(_check_pair, tasks, workers):
        parts.problems.extend(problems)
        if c is not None:
            counts[id_] = c
    return counts


def _class_counts(
    names: Sequence[str], splits: Mapping[str, Sequence[str]], counts: Mapping[str, Sequence[int]]
) -> tuple[ClassCount, ...]:
    num = len(names)
    stats = {s: (np.zeros(num + 1, np.int64), np.zeros(num + 1, np.int64)) for s in SPLIT_FILES}
    areas: list[list[float]] = [[] for _ in range(num + 1)]  # per class: its share of each train image
    for split, ids in splits.items():
        images, pixels = stats[split]
        for i in ids:
            if i in counts:
                c = np.asarray(counts[i][: num + 1], np.int64)
                images += c > 0
                pixels += c
                if split == "train":
                    size = sum(counts[i])  # every pixel of the label, ignore (255) included
                    for k in np.flatnonzero(c[1:]) + 1:
                        areas[k].append(int(c[k]) / size)
    return tuple(
        ClassCount(
            c,
            names[c - 1],
            int(stats["train"][0][c]),
            int(stats["val"][0][c]),
            int(stats["train"][1][c]),
            int(stats["val"][1][c]),
            float(np.median(areas[c])) if areas[c] else 0.0,
        )
        for c in range(1, num + 1)
    )


def _fold_counts(
    num: int,
    folds: Sequence[Sequence[int]],
    splits: Mapping[str, Sequence[str]],
    counts: Mapping[str, Sequence[int]],
) -> tuple[FoldCount, ...]:
    def present(split: str) -> np.ndarray:
        rows = [np.asarray(counts[i][1 : num + 1]) > 0 for i in splits.get(split, ()) if i in counts]
        return np.array(rows, bool).reshape(len(rows), num)

    train, val = present("train"), present("val")
    out = []
    for k, novel in enumerate(folds):
        mask = np.zeros(num, bool)
        mask[[c - 1 for c in novel if 1 <= c <= num]] = True
        keep = ~train[:, mask].any(1)
        out.append(
            FoldCount(
                k,
                tuple(novel),
                int(keep.sum()),
                int((keep & train[:, ~mask].any(1)).sum()),
                int(val[:, mask].any(1).sum()),
            )
        )
    return tuple(out)


def check_folder(root: str | Path, *, workers: int | None = None) -> FolderReport:
    """The full check of a dataset folder; every problem is listed, nothing is written into it.

    Beyond :func:`read_folder` (with ``check_files``): every image header is readable, every label is an
    8-bit single-channel PNG of its image's size with values in {0..C, 255}, and every novel class of
    every fold occurs in at least one validation label. Labels are decoded in ``workers`` processes.
    """
    parts = read_parts(Path(root), check_files=True)
    counts = _scan_labels(parts, workers) if parts.root.is_dir() else {}
    return _report(parts, counts)


def _report(parts: Parts, counts: Mapping[str, Sequence[int]]) -> FolderReport:
    names = parts.class_names
    classes: tuple[ClassCount, ...] = ()
    folds: tuple[FoldCount, ...] = ()
    if names is not None and len(parts.splits) == len(SPLIT_FILES):
        classes = _class_counts(names, parts.splits, counts)
        if parts.folds is not None:
            folds = _fold_counts(len(names), parts.folds, parts.splits, counts)
            val_ids = [i for i in parts.splits["val"] if i in counts]
            for fold in folds:
                for c in fold.novel:
                    if 1 <= c <= len(names) and classes[c - 1].val_images == 0 and val_ids:
                        parts.problems.append(
                            f'{FOLDS_FILE} fold "{fold.fold}": novel class {c} ({names[c - 1]!r}) occurs '
                            f"in no label of val.txt's images, so it cannot be evaluated; move images "
                            "holding it to val.txt, or take the class out of the fold"
                        )
    num = len(names) if names else 0
    pixels = {i: tuple(int(x) for x in c[: num + 1]) for i, c in counts.items()}
    dataset = None if parts.problems else dataset_of(parts)
    return FolderReport(parts.root, tuple(parts.problems), dataset, classes, folds, pixels)


# --------------------------------------------------------------------------------------------- folds


def make_folds(train_images: Mapping[int, int], num_folds: int) -> list[list[int]]:
    """The default folds: classes sorted by the number of training images holding them (descending, ties
    by class id), dealt round-robin over ``num_folds`` folds (the most frequent to fold 0, the next to
    fold 1, ...), so the frequent classes are spread over the folds. Each fold is returned sorted."""
    order = sorted(train_images, key=lambda c: (-train_images[c], c))
    if not 1 <= num_folds <= len(order):
        raise ValueError(f"{num_folds} folds need 1..{len(order)} (the classes that can be novel)")
    return [sorted(order[k::num_folds]) for k in range(num_folds)]


def write_default_folds(
    root: str | Path, num_folds: int, *, force: bool = False, workers: int | None = None
) -> tuple[list[list[int]], list[int]]:
    """Write ``ROOT/folds.json`` by :func:`make_folds`; returns (folds, classes left out of every fold).

    Classes that occur in no validation label cannot be evaluated, so they are never novel (left out of
    every fold: they stay base classes). Refuses (FolderLayoutError, nothing written) when folds.json
    exists and ``force`` is false, or when the rest of the folder has problems.
    """
    root = Path(root)
    path = root / FOLDS_FILE
    if path.exists() and not force:
        raise FolderLayoutError(
            root, [f"{FOLDS_FILE} exists; --make-folds does not replace it unless you pass --force"]
        )
    parts = read_parts(root, check_files=True)
    parts.problems = [p for p in parts.problems if not p.startswith(FOLDS_FILE)]
    counts = _scan_labels(parts, workers) if root.is_dir() else {}
    if parts.problems or parts.class_names is None:
        raise FolderLayoutError(root, parts.problems)
    stats = _class_counts(parts.class_names, parts.splits, counts)
    eligible = {s.id: s.train_images for s in stats if s.val_images > 0}
    left_out = [s.id for s in stats if s.val_images == 0]
    if not 1 <= num_folds <= len(eligible):
        raise FolderLayoutError(
            root,
            [
                f"--make-folds {num_folds}: {len(eligible)} classes occur in val.txt's labels, so 1.."
                f"{len(eligible)} folds can be made"
            ],
        )
    folds = make_folds(eligible, num_folds)
    text = json.dumps({str(k): f for k, f in enumerate(folds)}, indent=1) + "\n"
    atomic_write_text(path, text)
    return folds, left_out


# --------------------------------------------------------------------------------------------- split

SPLIT_SEED = "svfseg-split-0"
DEFAULT_MIN_VAL = 6  # a 5-shot episode: 5 supports and a query
DEFAULT_SPLIT_MIN_PIXELS = 2048  # the runtime's default dataset.min_pixels: a class "in" an image


@dataclass(frozen=True)
class WrittenSplit:
    """What ``--make-split`` wrote, and the classes it could not give ``min_val`` validation images."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    short: tuple[tuple[int, str, int], ...]  # (class, name, images holding it): fewer than min_val


def write_default_split(
    root: str | Path,
    val_fraction: float,
    *,
    min_pixels: int = DEFAULT_SPLIT_MIN_PIXELS,
    min_val: int = DEFAULT_MIN_VAL,
    force: bool = False,
    workers: int | None = None,
) -> WrittenSplit:
    """Write ``ROOT/train.txt`` and ``ROOT/val.txt`` for every image with a label (:func:`stratified_val_ids`,
    seed ``svfseg-split-0``; a class is in an image where it covers >= ``min_pixels`` pixels).

    Refuses (FolderLayoutError, nothing written) when a split file exists and ``force`` is false, or when
    the images, labels or classes have problems; problems of the split files being replaced do not count.
    """
    root = Path(root)
    problems: list[str] = []
    if not 0 < val_fraction < 1:
        problems.append(f"--make-split {val_fraction}: the validation fraction is between 0 and 1, e.g. 0.2")
    if min_val < 1 or min_pixels < 1:
        problems.append(f"--min-val {min_val} / --min-pixels {min_pixels}: both are integers >= 1")
    existing = [name for name in SPLIT_FILES.values() if (root / name).exists()]
    if existing and not force:
        problems.append(
            f"{' and '.join(existing)} exist(s); --make-split does not replace them unless you pass --force"
        )
    if problems:
        raise FolderLayoutError(root, problems)
    parts = read_parts(root, check_files=True)
    split_names = (*SPLIT_FILES.values(), FOLDS_FILE)
    parts.problems = [p for p in parts.problems if not any(name in p for name in split_names)]
    counts = _scan_labels(parts, workers) if root.is_dir() else {}
    if parts.problems or parts.class_names is None:
        raise FolderLayoutError(root, parts.problems)
    names = parts.class_names
    ids = sorted(counts)
    if not ids:
        raise FolderLayoutError(root, [f"{IMAGE_DIR}/ and {LABEL_DIR}/ hold no image with its label"])
    present = np.array([[counts[i][c] >= min_pixels for c in range(1, len(names) + 1)] for i in ids], bool)
    val = stratified_val_ids(present, ids, val_fraction=val_fraction, min_val=min_val, seed=SPLIT_SEED)
    chosen = set(val)
    train = [i for i in ids if i not in chosen]
    if not train:
        raise FolderLayoutError(
            root,
            [
                f"--make-split would put all {len(ids)} images in val.txt (each class takes --min-val "
                f"{min_val} val images where it can); lower --min-val (2 is enough for 1-shot episodes) or "
                "add images"
            ],
        )
    atomic_write_text(root / SPLIT_FILES["train"], "".join(f"{i}\n" for i in train))
    atomic_write_text(root / SPLIT_FILES["val"], "".join(f"{i}\n" for i in val))
    images = present.sum(0)
    short = tuple((c + 1, names[c], int(images[c])) for c in range(len(names)) if images[c] < min_val)
    return WrittenSplit(tuple(train), tuple(val), short)


# --------------------------------------------------------------------------------------------- CLI


def format_report(report: FolderReport) -> str:
    """The summary printed by ``python -m svfseg.dataprep.prepare folder``."""
    lines: list[str] = []
    ds = report.dataset
    if ds is not None:
        lines.append(
            f"{report.root}: {ds.num_classes} classes, {len(ds.train_ids)} train / {len(ds.val_ids)} val "
            f"images, {ds.num_folds} fold(s)"
        )
    if report.classes:
        width = max(len(c.name) for c in report.classes)
        lines.append(
            f"{'id':>4}  {'class':<{width}}  {'train img':>9}  {'val img':>7}  {'train px':>10}  "
            f"{'median area':>11}"
        )
        for c in report.classes:
            lines.append(
                f"{c.id:>4}  {c.name:<{width}}  {c.train_images:>9}  {c.val_images:>7}  {c.train_pixels:>10}  "
                f"{100 * c.train_median_area:>10.1f}%"
            )
        small = [c for c in report.classes if c.train_images and c.train_median_area < SMALL_AREA]
        if small:
            lines.append(
                f"{len(small)} of {len(report.classes)} classes cover a median of under {100 * SMALL_AREA:.0f}% "
                "of their training images: at a small working size a head may learn to predict background "
                "for them (docs/own-dataset.md, 'Small objects')"
            )
    names = {c.id: c.name for c in report.classes}
    for f in report.folds:
        novel = ", ".join(f"{c} {names.get(c, '?')}" for c in f.novel)
        lines.append(
            f"fold {f.fold}: novel [{novel}]; the leakage filter keeps {f.kept} training images "
            f"({f.kept_with_base} with a base class); {f.val_images} val images hold a novel class"
        )
    if report.problems:
        lines.append(f"{len(report.problems)} problem(s) in {report.root} (files relative to it):")
        lines.extend(f"  - {p}" for p in report.problems)
    else:
        lines.append("ok: the folder follows the layout")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "root", help="dataset folder (images/, labels/, classes.txt, train.txt, val.txt, folds.json)"
    )
    parser.add_argument(
        "--make-folds",
        type=int,
        metavar="K",
        help="write a default folds.json with K folds first (classes by training images, dealt round-robin)",
    )
    parser.add_argument(
        "--make-split",
        type=float,
        metavar="FRACTION",
        help="write train.txt / val.txt first: FRACTION of the images to val, seeded and stratified so "
        "that each class gets --min-val val images (rarest class first)",
    )
    parser.add_argument(
        "--min-val",
        type=int,
        default=DEFAULT_MIN_VAL,
        help="with --make-split: val images each class gets where it can (default 6: a 5-shot episode)",
    )
    parser.add_argument(
        "--min-pixels",
        type=int,
        default=DEFAULT_SPLIT_MIN_PIXELS,
        help="with --make-split: pixels of a class that make it count in an image (default 2048, as "
        "dataset.min_pixels)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="let --make-split / --make-folds replace existing train.txt, val.txt / folds.json",
    )
    parser.add_argument("--workers", type=int, help="processes decoding labels (default: CPUs, at most 8)")


def run(args: argparse.Namespace) -> int:
    if args.make_split is not None:
        try:
            split = write_default_split(
                args.root,
                args.make_split,
                min_pixels=args.min_pixels,
                min_val=args.min_val,
                force=args.force,
                workers=args.workers,
            )
        except FolderLayoutError as exc:
            print(exc)
            return 1
        root = Path(args.root)
        print(
            f"wrote {root / SPLIT_FILES['train']} ({len(split.train)} ids) and {root / SPLIT_FILES['val']} "
            f"({len(split.val)} ids)"
        )
        for c, name, n in split.short:
            where = (
                f"in only {n} image(s), fewer than --min-val {args.min_val}: all of them are in val"
                if n
                else "in no image: no episode can sample it (lower --min-pixels and dataset.min_pixels)"
            )
            print(f"class {c} ({name!r}) covers >= {args.min_pixels} pixels {where}")
    if args.make_folds is not None:
        try:
            folds, left_out = write_default_folds(
                args.root, args.make_folds, force=args.force, workers=args.workers
            )
        except FolderLayoutError as exc:
            print(exc)
            return 1
        print(f"wrote {Path(args.root) / FOLDS_FILE}: {len(folds)} folds {folds}")
        if left_out:
            print(f"classes {left_out} occur in no val label and stay base classes in every fold")
    report = check_folder(args.root, workers=args.workers)
    print(format_report(report))
    return 0 if report.ok else 1
