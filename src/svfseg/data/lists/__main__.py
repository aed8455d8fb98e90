"""``python -m svfseg.data.lists``: build (or import) the few-shot lists of every fold and write them in
the BAM/SVF layout (:mod:`svfseg.data.lists.bam_format`), with a summary table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from svfseg.data.fold import FoldSpec
from svfseg.data.layouts import FOLDER, LAYOUTS
from svfseg.data.lists.bam_format import export_lists, import_lists
from svfseg.data.lists.selection import DEFAULT_MIN_PIXELS, FewShotList, build_list
from svfseg.data.splits import COCO_SPLITS, NUM_FOLDS

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
    try:
        return _run(args)
    except (FileNotFoundError, ValueError) as err:  # a missing root or import folder, a malformed list
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    """Build (or import) every requested fold and split, write them, and print the summary."""
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
