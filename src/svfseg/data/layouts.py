"""On-disk layouts of the supported datasets: where source pairs come from and how paths look.

Every path svfseg stores is relative to the dataset root, e.g. ``JPEGImages/2008_000008.jpg`` (Pascal)
or ``annotations/train2014/COCO_train2014_000000000009.png`` (COCO). Lists from other machines carry
absolute prefixes; :func:`relativize` strips them by matching the layout's known path shapes from the right.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from svfseg.data.splits import NUM_CLASSES

Pair = tuple[str, str]
SPLITS = ("train", "val")

# Right-anchored shapes of relative paths: one known directory component list + the file name.
_PASCAL_SHAPES = (("JPEGImages",), ("SegmentationClassAug",))
_COCO_SHAPES = (
    ("annotations", "train2014"),
    ("annotations", "val2014"),
    ("train2014",),
    ("val2014",),
)


@dataclass(frozen=True)
class Layout:
    """How one dataset is laid out under its root."""

    name: str
    split_dataset: str  # key of splits.NUM_CLASSES whose folds this dataset uses
    shapes: tuple[tuple[str, ...], ...]
    prepare_command: str  # format string with {root}

    @property
    def num_classes(self) -> int:
        if self.split_dataset not in NUM_CLASSES:
            raise ValueError(
                f"dataset {self.name}: the class count is the folder's own (ROOT/classes.txt); take it "
                "from the run's FoldSpec.num_classes"
            )
        return NUM_CLASSES[self.split_dataset]

    def hint(self, root: str | Path) -> str:
        """The command that creates this dataset under ``root``."""
        return self.prepare_command.format(root=root)


LAYOUTS: dict[str, Layout] = {
    "pascal": Layout(
        "pascal",
        "pascal",
        _PASCAL_SHAPES,
        "python -m svfseg.dataprep.prepare pascal --voc VOC2012_DIR --sbd SBD_DIR --out {root}",
    ),
    "coco": Layout(
        "coco", "coco", _COCO_SHAPES, "python -m svfseg.dataprep.prepare coco --coco COCO_DIR --out {root}"
    ),
    # A user's dataset folder (images/, labels/, classes.txt, train.txt, val.txt, folds.json): no code.
    "folder": Layout(
        "folder",
        "folder",
        (("images",), ("labels",)),
        "python -m svfseg.dataprep.prepare folder {root}  (checks the layout; docs/own-dataset.md)",
    ),
    # Generated data in the Pascal layout with its own source lists in ROOT/lists/.
    "synthetic": Layout(
        "synthetic",
        "pascal",
        _PASCAL_SHAPES,
        "python -m svfseg.dataprep.synthetic --layout pascal --root {root}",
    ),
}
PASCAL_SOURCE_RESOURCES = {"train": "voc_sbd_merge_noduplicate.txt", "val": "val.txt"}
FOLDER = "folder"


def get_layout(dataset: str) -> Layout:
    if dataset not in LAYOUTS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[dataset]


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {list(SPLITS)}")


@dataclass(frozen=True)
class SourceList:
    """The candidate (image, label) pairs of one split, with the text they were read from (fingerprinted)."""

    pairs: tuple[Pair, ...]
    text: str
    origin: str  # a path or a description, used in messages and cache metadata

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def relativize(
    path: str, layout: Layout, *, root: Path | None = None, strip_prefix: str | None = None
) -> str:
    """A root-relative posix path for ``path`` from any machine.

    Rules, in order: a given ``strip_prefix`` must start the path and is removed; a relative path is kept;
    an absolute path under ``root`` is made relative to it; otherwise the rightmost match of the layout's
    known shapes (``JPEGImages/x.jpg``, ``annotations/train2014/x.png``, ...) is kept.
    """
    if strip_prefix is None and _is_canonical_relative(path):
        return path  # the common case (our own lists, COCO scans): no pathlib parsing per line
    if strip_prefix is not None:
        if not path.startswith(strip_prefix):
            raise ValueError(f"path {path!r} does not start with strip_prefix {strip_prefix!r}")
        rel = path[len(strip_prefix) :].lstrip("/")
        return _clean(rel, path)
    pure = PurePosixPath(path)
    if not pure.is_absolute():
        return _clean(path, path)
    if root is not None:
        try:
            return _clean(str(pure.relative_to(PurePosixPath(str(root)))), path)
        except ValueError:
            pass  # not under root: fall back to the layout's shapes
    parts = pure.parts
    for shape in layout.shapes:
        n = len(shape)
        if len(parts) > n and tuple(parts[-n - 1 : -1]) == shape:
            return "/".join(parts[-n - 1 :])
    known = ", ".join("/".join(s) + "/" for s in layout.shapes)
    raise ValueError(
        f"cannot make {path!r} relative to the dataset root: it is not under the root and has none of the "
        f"{layout.name} layout's known directories ({known}); pass strip_prefix (--strip-prefix) explicitly"
    )


def _is_canonical_relative(path: str) -> bool:
    """True when ``path`` is already a clean relative posix path (what ``str(PurePosixPath(path))`` keeps)."""
    return bool(path) and path[0] != "/" and all(p not in ("", ".", "..") for p in path.split("/"))


def _clean(rel: str, original: str) -> str:
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts:
        raise ValueError(
            f"path {original!r} does not give a relative path inside the dataset root (got {rel!r})"
        )
    return str(pure)


_WS = re.compile(r"\s+")


def parse_pair_lines(text: str, origin: str, layout: Layout, *, root: Path | None = None) -> tuple[Pair, ...]:
    """Parse ``image label`` lines (blank lines skipped) into root-relative pairs, in file order."""
    pairs: list[Pair] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = _WS.split(line.strip())
        if fields == [""]:
            continue
        if len(fields) != 2:
            raise ValueError(
                f"{origin}:{lineno}: expected 'IMAGE LABEL' (two paths separated by whitespace), got {line!r}"
            )
        image, label = (relativize(f, layout, root=root) for f in fields)
        pairs.append((image, label))
    if not pairs:
        raise ValueError(f"{origin}: the list has no 'IMAGE LABEL' lines")
    return tuple(pairs)


def read_source_file(path: str | Path, layout: Layout, *, root: Path | None = None) -> SourceList:
    """A source list from a file of ``image label`` lines."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"source list {p} does not exist (pass an existing file as source_list / --source-list)"
        )
    text = p.read_text()
    return SourceList(parse_pair_lines(text, str(p), layout, root=root), text, str(p.resolve()))


def default_source(layout: Layout, root: Path, split: str) -> SourceList:
    """The standard source pairs of a split.

    Pascal: the lists shipped with PFENet (``voc_sbd_merge_noduplicate.txt``, 5,953 lines; ``val.txt``,
    1,449), stored as package data. Synthetic: ``ROOT/lists/{split}.txt``. COCO: a sorted scan of
    ``ROOT/annotations/{split}2014/*.png``, each paired with ``{split}2014/<stem>.jpg``.
    """
    check_split(split)
    if layout.name == "pascal":
        name = PASCAL_SOURCE_RESOURCES[split]
        text = (resources.files("svfseg") / "resources" / "pascal" / name).read_text()
        return SourceList(parse_pair_lines(text, name, layout), text, f"svfseg.resources/pascal/{name}")
    if layout.name == FOLDER:
        from svfseg.data.folder_layout import read_folder

        pairs = read_folder(root, check_files=True).pairs(split)
        text = "".join(f"{image} {label}\n" for image, label in pairs)
        return SourceList(pairs, text, f"{root}/{split}.txt")
    if layout.name == "synthetic":
        path = root / "lists" / f"{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(
                f"source list {path} is missing; generate the dataset with: {layout.hint(root)}"
            )
        return read_source_file(path, layout, root=root)
    label_dir = root / "annotations" / f"{split}2014"
    stems = sorted(p.stem for p in label_dir.glob("*.png")) if label_dir.is_dir() else []
    if not stems:
        raise FileNotFoundError(
            f"no label PNGs in {label_dir}; convert the COCO annotations with: {layout.hint(root)}"
        )
    lines = [f"{split}2014/{s}.jpg annotations/{split}2014/{s}.png" for s in stems]
    text = "\n".join(lines) + "\n"
    return SourceList(parse_pair_lines(text, str(label_dir), layout), text, f"scan of {label_dir}")
