"""Few-shot lists in the BAM/SVF layout: export, and import of lists another codebase wrote.

The layout is ``OUT/{train,val}/data_list_{fold}.txt`` ("IMAGE LABEL" lines) and
``sub_class_file_list_{fold}.txt`` (a Python dict literal of class id -> pairs), as the BAM and SVF
code bases read it.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

from svfseg.data import io as data_io
from svfseg.data.fold import FoldSpec
from svfseg.data.layouts import LAYOUTS, Layout, Pair, check_split, get_layout, relativize
from svfseg.data.lists.selection import FewShotList, pool_classes


def list_files(out_dir: str | Path, fold: int, split: str) -> tuple[Path, Path]:
    """(data_list, sub_class_file_list) paths of the BAM/SVF layout: ``OUT/{train|val}/..._{fold}.txt``."""
    check_split(split)
    base = Path(out_dir) / split
    return base / f"data_list_{fold}.txt", base / f"sub_class_file_list_{fold}.txt"


def export_lists(lst: FewShotList, out_dir: str | Path, fold: int, split: str) -> tuple[Path, Path]:
    """Write a list in the BAM/SVF layout (relative paths); the dict file is a Python literal."""
    data_path, sub_path = list_files(out_dir, fold, split)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    data_path.write_text("".join(f"{i} {lb}\n" for i, lb in lst.pairs))
    sub = {c: [[i, lb] for i, lb in lst.by_class[c]] for c in lst.classes}
    sub_path.write_text(str(sub) + "\n")
    return data_path, sub_path


def _shapes_of(dataset: str | None) -> Layout:
    if dataset is not None:
        return get_layout(dataset)
    shapes = tuple(dict.fromkeys(s for lay in LAYOUTS.values() for s in lay.shapes))
    return Layout("any", "pascal", shapes, "")


def import_lists(
    list_dir: str | Path,
    fold: int,
    split: str,
    root: str | Path,
    strip_prefix: str | None = None,
    *,
    dataset: str | None = None,
    coco_split: str = "interleaved",
) -> FewShotList:
    """Read lists in the BAM/SVF layout (also with another machine's absolute paths) as a FewShotList.

    Paths are made root-relative (``layouts.relativize``: ``strip_prefix`` or the known directories
    ``JPEGImages/``, ``SegmentationClassAug/``, ``train2014/``, ``val2014/``, ``annotations/``) and must
    exist under ``root``. With ``dataset`` given, the class ids must be exactly the fold's pool classes.
    """
    layout = _shapes_of(dataset)
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise FileNotFoundError(f"dataset root {root_path} does not exist")
    data_path, sub_path = list_files(list_dir, fold, split)
    for p in (data_path, sub_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} does not exist; expected the BAM/SVF layout DIR/{split}/data_list_{fold}.txt and "
                f"DIR/{split}/sub_class_file_list_{fold}.txt"
            )

    def rel(pair: Sequence[str], where: str) -> Pair:
        if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise ValueError(f"{where}: expected an (image, label) pair of strings, got {pair!r}")
        return (
            relativize(pair[0], layout, root=root_path, strip_prefix=strip_prefix),
            relativize(pair[1], layout, root=root_path, strip_prefix=strip_prefix),
        )

    text = data_path.read_text()
    pairs: list[Pair] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            pairs.append(rel(line.split(), f"{data_path}:{lineno}"))
    try:
        raw = ast.literal_eval(sub_path.read_text().strip())
    except (SyntaxError, ValueError) as exc:
        raise ValueError(
            f"{sub_path} is not a Python dict literal of class id -> [(image, label), ...]: {exc}"
        ) from None
    if not isinstance(raw, dict) or not all(isinstance(k, int) for k in raw):
        raise ValueError(f"{sub_path}: expected a dict with integer class ids as keys")
    by_class = {
        int(c): tuple(sorted({rel(p, f"{sub_path} class {c}") for p in v})) for c, v in sorted(raw.items())
    }
    pair_set = sorted(set(pairs))
    stray = sorted({p for v in by_class.values() for p in v} - set(pair_set))
    if stray:
        raise ValueError(f"{sub_path}: {len(stray)} pool pairs are not in {data_path}, e.g. {stray[0]}")
    if dataset is not None:
        expected, _ = pool_classes(FoldSpec(layout.name, fold, coco_split=coco_split), split)
        if sorted(by_class) != expected:
            raise ValueError(
                f"{sub_path}: class ids {sorted(by_class)} are not the {dataset} fold {fold} {split} classes "
                f"{expected} (wrong fold, split or coco_split?)"
            )
    missing = [f for p in pair_set for f in p if not (root_path / f).is_file()]
    if missing:
        shown = ", ".join(str(root_path / m) for m in missing[:5])
        raise data_io.MissingDataError(
            f"{len(missing)} files named in {data_path} are missing under {root_path}, e.g. {shown}; "
            "check --root (and --strip-prefix)"
        )
    return FewShotList(tuple(pair_set), by_class)
