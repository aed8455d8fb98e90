"""Few-shot lists in the BAM/SVF layout: export, import of foreign lists, and the CLI that writes them.

The layout is ``OUT/{train,val}/data_list_{fold}.txt`` ("IMAGE LABEL" lines) and
``sub_class_file_list_{fold}.txt`` (a Python dict literal of class id -> pairs), as the BAM and SVF
code bases read it. ``python -m svfseg.data.lists`` builds (:func:`svfseg.data.selection.build_list`)
or imports the lists of every fold and writes them in that layout.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from svfseg.data import io as data_io
from svfseg.data.fold import FoldSpec
from svfseg.data.layouts import FOLDER, LAYOUTS, Layout, Pair, check_split, get_layout, relativize
from svfseg.data.selection import DEFAULT_MIN_PIXELS, FewShotList, build_list, pool_classes
from svfseg.data.splits import COCO_SPLITS, NUM_FOLDS

# --------------------------------------------------------------------------------------------- BAM/SVF layout


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


# --------------------------------------------------------------------------------------------- CLI

# Image counts of the SVF repo's Pascal lists (fss_list filtered / fsss_list_ori unfiltered, 2048 px),
# keyed by (fold, split, filtered). Lists built from the standard sources should match them exactly.
REFERENCE_PASCAL: dict[tuple[int, str, bool], int] = {
    (0, "train", True): 4208,
    (1, "train", True): 3726,
    (2, "train", True): 2752,
    (3, "train", True): 4510,
    (0, "train", False): 4760,
    (1, "train", False): 4588,
    (2, "train", False): 4097,
    (3, "train", False): 5108,
    (0, "val", False): 364,
    (1, "val", False): 445,
    (2, "val", False): 592,
    (3, "val", False): 336,
}


def _summary(
    rows: list[tuple[int, str, FewShotList]], title: str, reference: dict[tuple[int, str], int]
) -> None:

    table = Table(title=title)
    cols = ["fold", "split", "images", "classes", "min pool", "max pool", "empty pools"]
    for col in cols + (["reference"] if reference else []):
        table.add_column(col, justify="right")
    for fold, split, lst in rows:
        sizes = [len(lst.by_class[c]) for c in lst.classes]
        cells = [
            str(fold),
            split,
            str(len(lst)),
            str(len(sizes)),
            str(min(sizes, default=0)),
            str(max(sizes, default=0)),
            ",".join(map(str, lst.empty_classes())) or "-",
        ]
        if reference:
            ref = reference.get((fold, split))
            cells.append("-" if ref is None else f"{ref} {'ok' if ref == len(lst) else 'DIFFERS'}")
        table.add_row(*cells)
    console = Console()
    console.width = max(console.width, 110)  # keep rows on one line when piped (rich defaults to 80)
    console.print(table)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m svfseg.data.lists",
        description="Build few-shot lists for all folds (or import foreign BAM/SVF lists) and write them "
        "in the BAM/SVF layout OUT/{train,val}/{data_list,sub_class_file_list}_{fold}.txt.",
    )
    p.add_argument("--dataset", required=True, choices=sorted(LAYOUTS))
    p.add_argument("--root", required=True, help="dataset root (paths in the lists are relative to it)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--folds", type=int, nargs="+", default=list(range(NUM_FOLDS)), choices=range(NUM_FOLDS))
    p.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    p.add_argument("--coco-split", default="interleaved", choices=COCO_SPLITS)
    p.add_argument(
        "--import",
        dest="import_dir",
        metavar="DIR",
        help="convert lists in the BAM/SVF layout under DIR (e.g. SVF's lists/pascal/fss_list) instead of building",
    )
    p.add_argument("--strip-prefix", help="with --import: prefix to remove from every path")
    build = p.add_argument_group("building")
    build.add_argument(
        "--no-filter", action="store_true", help="keep training images with novel pixels (PFENet)"
    )
    build.add_argument("--min-pixels", type=int, default=DEFAULT_MIN_PIXELS)
    build.add_argument(
        "--train-source", help="source list of candidate training pairs (default: the standard one)"
    )
    build.add_argument(
        "--val-source", help="source list of candidate validation pairs (default: the standard one)"
    )
    build.add_argument("--cache-dir")
    build.add_argument("--workers", type=int)
    build.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rows: list[tuple[int, str, FewShotList]] = []
    sources = {"train": args.train_source, "val": args.val_source}
    for fold in args.folds:
        for split in args.splits:
            if args.import_dir:
                lst = import_lists(
                    args.import_dir,
                    fold,
                    split,
                    args.root,
                    args.strip_prefix,
                    dataset=args.dataset,
                    coco_split=args.coco_split,
                )
            else:
                spec = (
                    FoldSpec.for_folder(args.root, fold)
                    if args.dataset == FOLDER
                    else FoldSpec(args.dataset, fold, coco_split=args.coco_split)
                )
                lst = build_list(
                    spec,
                    args.root,
                    split,
                    filter_novel=not args.no_filter,
                    min_pixels=args.min_pixels,
                    source_list=sources[split],
                    cache_dir=args.cache_dir,
                    workers=args.workers,
                    progress=not args.no_progress,
                )
            export_lists(lst, args.out, fold, split)
            rows.append((fold, split, lst))
    mode = f"imported from {args.import_dir}" if args.import_dir else "built"
    reference: dict[tuple[int, str], int] = {}
    standard = (
        not (args.import_dir or args.train_source or args.val_source)
        and args.min_pixels == DEFAULT_MIN_PIXELS
    )
    if args.dataset == "pascal" and standard:
        reference = {
            (f, sp): REFERENCE_PASCAL[(f, sp, sp == "train" and not args.no_filter)]
            for f in args.folds
            for sp in args.splits
        }
    _summary(rows, f"{args.dataset} lists {mode} -> {args.out}", reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
