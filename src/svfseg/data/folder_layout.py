"""Your own few-shot dataset as a plain folder: its layout and the reader the runtime uses.

The layout (every path below is relative to the dataset root ``ROOT``)::

    images/<id>.jpg|.jpeg|.png   photos
    labels/<id>.png              one channel (mode L, or P read as palette indices), the size of its image:
                                 0 background, 1..C classes, 255 ignore
    classes.txt                  line c (1-based) = name of class c: exactly C non-empty, unique lines
    train.txt, val.txt           one id per line (no extension); each id in exactly one of them, once
    folds.json                   {"0": [novel class ids], "1": [...], ...}: K >= 1 folds, keys "0".."K-1",
                                 each non-empty, pairwise disjoint, ids in 1..C

* :func:`read_folder` reads the text files (and, with ``check_files``, which files exist) and returns a
  :class:`FolderDataset`, the API the runtime uses. It raises :class:`FolderLayoutError` listing every
  problem at once.
* The full check (every label decoded) and the default fold maker are offline tools:
  :mod:`svfseg.dataprep.folder_check`, run by ``python -m svfseg.dataprep.prepare folder ROOT``.

Sizes are compared at the displayed (EXIF) orientation, the rule of :mod:`svfseg.data.io`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_DIR, LABEL_DIR = "images", "labels"
CLASSES_FILE, FOLDS_FILE = "classes.txt", "folds.json"
SPLIT_FILES = {"train": "train.txt", "val": "val.txt"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_SUFFIX = ".png"
MAX_CLASSES = 254  # 1..254: 255 is ignore


class FolderLayoutError(ValueError):
    """A dataset folder that does not follow the layout; ``problems`` lists every problem found."""

    def __init__(self, root: Path, problems: Sequence[str]) -> None:
        self.root = Path(root)
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"dataset folder {self.root} has {len(self.problems)} problem(s) (files named relative to it):\n"
            f"{lines}"
        )


@dataclass(frozen=True)
class FolderDataset:
    """A dataset folder that passed :func:`read_folder`. Class ids are 1..``num_classes``; fold k's novel
    classes are ``folds[k]`` and its base classes all the others."""

    root: Path
    class_names: tuple[str, ...]
    folds: tuple[tuple[int, ...], ...]
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    # id -> image suffix found on disk (".jpg", ".jpeg" or ".png"); an id not in it is looked up on disk.
    image_suffixes: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_folds(self) -> int:
        return len(self.folds)

    def ids(self, split: str) -> tuple[str, ...]:
        if split == "train":
            return self.train_ids
        if split == "val":
            return self.val_ids
        raise ValueError(f"split {split!r}: expected 'train' or 'val'")

    def image_name(self, id_: str) -> str:
        """The root-relative posix path of the image of ``id_``."""
        suffix = self.image_suffixes.get(id_)
        if suffix is None:
            found = [s for s in IMAGE_SUFFIXES if (self.root / IMAGE_DIR / f"{id_}{s}").is_file()]
            suffix = found[0] if found else IMAGE_SUFFIXES[0]
        return f"{IMAGE_DIR}/{id_}{suffix}"

    def label_name(self, id_: str) -> str:
        """The root-relative posix path of the label of ``id_``."""
        return f"{LABEL_DIR}/{id_}{LABEL_SUFFIX}"

    def image_path(self, id_: str) -> Path:
        return self.root / self.image_name(id_)

    def label_path(self, id_: str) -> Path:
        return self.root / self.label_name(id_)

    def pairs(self, split: str) -> tuple[tuple[str, str], ...]:
        """(image, label) root-relative posix paths of a split, in list order."""
        return tuple((self.image_name(i), self.label_name(i)) for i in self.ids(split))

    def _fold(self, fold: int) -> tuple[int, ...]:
        if not 0 <= fold < len(self.folds):
            raise ValueError(
                f"fold {fold} does not exist in {self.root / FOLDS_FILE}: it has folds 0..{len(self.folds) - 1}"
            )
        return self.folds[fold]

    def novel_classes(self, fold: int) -> tuple[int, ...]:
        return self._fold(fold)

    def base_classes(self, fold: int) -> tuple[int, ...]:
        novel = set(self._fold(fold))
        return tuple(c for c in range(1, self.num_classes + 1) if c not in novel)


# --------------------------------------------------------------------------------------------- reading


@dataclass
class Parts:
    """What could be read of a folder, with the problems found on the way."""

    root: Path
    problems: list[str] = field(default_factory=list)
    class_names: list[str] | None = None
    folds: list[list[int]] | None = None
    folds_missing: bool = False
    splits: dict[str, list[str]] = field(default_factory=dict)
    images: dict[str, list[str]] = field(default_factory=dict)  # id -> image file names found
    labels: set[str] = field(default_factory=set)


def _read_text(parts: Parts, name: str, fix: str) -> list[str] | None:
    path = parts.root / name
    if not path.is_file():
        what = "is a folder, not a file" if path.exists() else "does not exist"
        parts.problems.append(f"{name} {what}; {fix}")
        return None
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        parts.problems.append(f"{name} is not UTF-8 text ({exc}); save it as UTF-8")
    except OSError as exc:
        parts.problems.append(f"{name} cannot be read ({exc.strerror or exc}); check its permissions")
    return None


def _read_classes(parts: Parts) -> None:
    fix = "write one class name per line, line c naming class c (1-based)"
    lines = _read_text(parts, CLASSES_FILE, fix)
    if lines is None:
        return
    while lines and not lines[-1].strip():  # trailing blank lines are not classes
        lines.pop()
    names = [line.strip() for line in lines]
    if not names:
        parts.problems.append(f"{CLASSES_FILE} names no class; {fix}")
        return
    if len(names) > MAX_CLASSES:
        parts.problems.append(
            f"{CLASSES_FILE} has {len(names)} classes; labels are 8-bit with 255 = ignore, so at most "
            f"{MAX_CLASSES} classes fit"
        )
    first: dict[str, int] = {}
    for n, name in enumerate(names, 1):
        if not name:
            parts.problems.append(
                f"{CLASSES_FILE} line {n} is empty; every line 1..{len(names)} must name its class "
                "(remove the line and renumber the labels, or name the class)"
            )
        elif name in first:
            parts.problems.append(
                f"{CLASSES_FILE} line {n}: class name {name!r} repeats line {first[name]}; names must be "
                "unique, rename one of them"
            )
        else:
            first[name] = n
    parts.class_names = names


def _valid_id(id_: str) -> str | None:
    """Why ``id_`` cannot be an id (None when it can)."""
    if any(ch.isspace() for ch in id_):
        return "contains whitespace"
    if "/" in id_ or "\\" in id_:
        return "contains a path separator; list the bare id, the file lies in images/ and labels/"
    if id_.startswith("."):
        return "starts with '.'"
    if Path(id_).suffix.lower() in (*IMAGE_SUFFIXES, LABEL_SUFFIX):
        return f"ends with {Path(id_).suffix!r}; list ids without an extension ({Path(id_).stem!r})"
    return None


def _read_splits(parts: Parts) -> None:
    where: dict[str, tuple[str, int]] = {}
    for split, name in SPLIT_FILES.items():
        lines = _read_text(parts, name, f"write the {split} ids there, one per line, without extension")
        if lines is None:
            continue
        ids: list[str] = []
        for n, raw in enumerate(lines, 1):
            id_ = raw.strip()
            if not id_:
                continue
            bad = _valid_id(id_)
            if bad:
                parts.problems.append(f"{name} line {n}: id {id_!r} {bad}")
                continue
            if id_ in where:
                other, m = where[id_]
                if other == name:
                    parts.problems.append(
                        f"{name} line {n}: id {id_!r} is listed again (first on line {m}); list each id once"
                    )
                else:
                    parts.problems.append(
                        f"{name} line {n}: id {id_!r} is also in {other} (line {m}); an id belongs to "
                        "exactly one split, remove it from one of the files"
                    )
                continue
            where[id_] = (name, n)
            ids.append(id_)
        if not ids:
            parts.problems.append(f"{name} lists no id; each split needs at least one image")
        parts.splits[split] = ids


def _read_folds(parts: Parts) -> None:
    path = parts.root / FOLDS_FILE
    fix = 'write e.g. {"0": [1, 2], "1": [3, 4]} (or run python -m svfseg.dataprep.prepare folder ROOT --make-folds K)'
    if not path.exists():
        parts.folds_missing = True
        parts.problems.append(f"{FOLDS_FILE} does not exist; {fix}")
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        parts.problems.append(f"{FOLDS_FILE} is not valid JSON ({exc}); {fix}")
        return
    except OSError as exc:
        parts.problems.append(f"{FOLDS_FILE} cannot be read ({exc.strerror or exc})")
        return
    if not isinstance(data, dict):
        parts.problems.append(
            f"{FOLDS_FILE} holds a JSON {type(data).__name__}, not an object of folds; {fix}"
        )
        return
    if not data:
        parts.problems.append(f"{FOLDS_FILE} has no fold; {fix}")
        return
    num = parts.class_names and len(parts.class_names)
    keys = list(data)
    expected = [str(k) for k in range(len(keys))]
    if sorted(keys, key=lambda k: (len(k), k)) != expected:
        missing = [k for k in expected if k not in data]
        extra = [k for k in keys if k not in expected]
        parts.problems.append(
            f'{FOLDS_FILE}: fold keys {keys} are not "0".."{len(keys) - 1}" (missing {missing}, '
            f'unexpected {extra}); number the folds from "0" without gaps'
        )
    folds: list[list[int]] = []
    owner: dict[int, str] = {}
    for key in sorted(keys, key=lambda k: (len(k), k)):
        value = data[key]
        if not isinstance(value, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in value
        ):
            parts.problems.append(
                f'{FOLDS_FILE} fold "{key}": {value!r} is not a list of class ids (integers)'
            )
            continue
        if not value:
            parts.problems.append(
                f'{FOLDS_FILE} fold "{key}" is empty; give it at least one novel class or remove it'
            )
        for c in value:
            if c < 1 or (num and c > num):
                hi = num if num else "C"
                parts.problems.append(
                    f'{FOLDS_FILE} fold "{key}": class id {c} is out of range 1..{hi} '
                    f"({CLASSES_FILE} names {hi} classes; 0 is background and cannot be novel)"
                )
            elif c in owner:
                where = "twice in this fold" if owner[c] == key else f'also in fold "{owner[c]}"'
                parts.problems.append(
                    f'{FOLDS_FILE} fold "{key}": class {c} is {where}; folds must be disjoint, '
                    "a class is novel in at most one fold"
                )
            else:
                owner[c] = key
        folds.append(list(value))
    parts.folds = folds


def _scan_files(parts: Parts, *, report: bool) -> None:
    """Which images and labels exist; with ``report``, the problems of files against the lists."""
    img_dir, lab_dir = parts.root / IMAGE_DIR, parts.root / LABEL_DIR
    for folder, what in ((img_dir, "images"), (lab_dir, "labels")):
        if not folder.is_dir() and report:
            parts.problems.append(f"{what}/ does not exist; put the {what} of the dataset there")
    stray: list[str] = []
    if img_dir.is_dir():
        for entry in sorted(os.scandir(img_dir), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            stem, suffix = os.path.splitext(entry.name)
            if entry.is_file() and suffix in IMAGE_SUFFIXES:
                parts.images.setdefault(stem, []).append(entry.name)
            else:
                stray.append(f"{IMAGE_DIR}/{entry.name}")
    if lab_dir.is_dir():
        for entry in sorted(os.scandir(lab_dir), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            stem, suffix = os.path.splitext(entry.name)
            if entry.is_file() and suffix == LABEL_SUFFIX:
                parts.labels.add(stem)
            else:
                stray.append(f"{LABEL_DIR}/{entry.name}")
    if not report:
        return
    for name in stray:
        parts.problems.append(
            f"{name} is not a {'/'.join(IMAGE_SUFFIXES) if name.startswith(IMAGE_DIR) else LABEL_SUFFIX} "
            "file; move it out of the dataset folder (suffixes are lower case)"
        )
    for stem, names in parts.images.items():
        if len(names) > 1:
            parts.problems.append(f"{IMAGE_DIR}/: id {stem!r} has {len(names)} images {names}; keep one")
    listed = {i: s for s, ids in parts.splits.items() for i in ids}
    for stem in sorted(set(parts.images) - parts.labels):
        parts.problems.append(
            f"{IMAGE_DIR}/{parts.images[stem][0]} has no label {LABEL_DIR}/{stem}{LABEL_SUFFIX}; "
            "add the label or remove the image"
        )
    for stem in sorted(parts.labels - set(parts.images)):
        parts.problems.append(
            f"{LABEL_DIR}/{stem}{LABEL_SUFFIX} has no image {IMAGE_DIR}/{stem}.jpg|.jpeg|.png; "
            "add the image or remove the label"
        )
    if len(parts.splits) == len(SPLIT_FILES):  # both lists read: every file must be listed
        for stem in sorted((set(parts.images) | parts.labels) - set(listed)):
            parts.problems.append(
                f"id {stem!r} ({IMAGE_DIR}/ or {LABEL_DIR}/) is in neither train.txt nor val.txt; "
                "list it in one of them, or remove its files"
            )
    for id_, split in listed.items():
        missing = [
            what
            for what, ok in (
                (f"{IMAGE_DIR}/{id_}.jpg|.jpeg|.png", id_ in parts.images),
                (f"{LABEL_DIR}/{id_}{LABEL_SUFFIX}", id_ in parts.labels),
            )
            if not ok
        ]
        if missing:
            parts.problems.append(
                f"{SPLIT_FILES[split]} lists id {id_!r} but {' and '.join(missing)} do(es) not exist; "
                "add the file(s) or remove the id from the list"
            )


def read_parts(root: Path, *, check_files: bool) -> Parts:
    parts = Parts(root)
    if not root.is_dir():
        parts.problems.append(f"the dataset folder {root} does not exist (or is not a folder)")
        return parts
    _read_classes(parts)
    _read_splits(parts)
    _read_folds(parts)
    _scan_files(parts, report=check_files)
    return parts


def dataset_of(parts: Parts) -> FolderDataset:
    assert parts.class_names is not None and parts.folds is not None
    return FolderDataset(
        root=parts.root,
        class_names=tuple(parts.class_names),
        folds=tuple(tuple(f) for f in parts.folds),
        train_ids=tuple(parts.splits["train"]),
        val_ids=tuple(parts.splits["val"]),
        image_suffixes={stem: os.path.splitext(names[0])[1] for stem, names in parts.images.items()},
    )


def read_folder(root: str | Path, *, check_files: bool = False) -> FolderDataset:
    """Read ``classes.txt``, ``folds.json``, ``train.txt`` and ``val.txt`` of a dataset folder.

    With ``check_files`` it also checks that every listed id has its image and label and that every file
    in ``images/`` and ``labels/`` is listed (no file is decoded: :func:`check_folder` does that). Raises
    :class:`FolderLayoutError` listing every problem found.
    """
    parts = read_parts(Path(root), check_files=check_files)
    if parts.problems:
        raise FolderLayoutError(parts.root, parts.problems)
    return dataset_of(parts)
