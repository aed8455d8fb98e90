"""Weights in one command: ``python -m svfseg.weights {list,fetch,import-bam}``.

* ``list [--dir DIR]``: what each ``backbone=`` needs, where it comes from, whether it is present.
* ``fetch NAME [--dir DIR]``: download, convert, check and atomically write one backbone's weights.
* ``import-bam BEST_PTH --dataset D --fold K --backbone B [--out PATH]``: BAM's released base learner.

Exit status 0 on success, 2 on bad input (the message names the file and the fix; nothing is written).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from svfseg.weights.bam_import import BAM_BACKBONE_DIRS, BAMImportError, import_bam_base_learner
from svfseg.weights.fetch import WeightsFetchError, fetch, status
from svfseg.weights.sources import SOURCES, source

DEFAULT_DIR = os.environ.get("SVFSEG_WEIGHTS", "initmodel")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m svfseg.weights", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="what each backbone= needs and what is present")
    listing.add_argument("--dir", default=DEFAULT_DIR, help="weights folder (paths.weights_dir)")
    get = commands.add_parser("fetch", help="download + convert + check one backbone's ImageNet weights")
    get.add_argument("name", choices=[s.name for s in SOURCES])
    get.add_argument("--dir", default=DEFAULT_DIR, help="weights folder (paths.weights_dir)")
    bam = commands.add_parser(
        "import-bam",
        help="BAM's released stage-1 PSPNet (best.pth) -> svfseg's base-learner file for method.base_learner",
    )
    bam.add_argument("source", help="BAM's initmodel/PSPNet/{pascal|coco}/split{k}/{resnet50|vgg}/best.pth")
    bam.add_argument("--dataset", required=True, choices=("pascal", "coco"))
    bam.add_argument("--fold", required=True, type=int, choices=range(4))
    bam.add_argument("--backbone", required=True, choices=sorted(BAM_BACKBONE_DIRS))
    bam.add_argument("--coco-split", default="interleaved", choices=("interleaved", "contiguous"))
    bam.add_argument("--out", default=None, help="output file (default: where conf/method/bam.yaml looks)")
    bam.add_argument(
        "--dir",
        default=DEFAULT_DIR,
        help="weights folder of the default output (paths.weights_dir; default $SVFSEG_WEIGHTS or initmodel)",
    )
    return parser


def _list(weights_dir: str) -> int:
    table = Table(title=f"ImageNet weights under {weights_dir}")
    for column in ("name", "backbone", "paper", "get", "file", "present"):
        table.add_column(column)
    for row in status(weights_dir):
        table.add_row(*row.values())
    Console(width=160).print(table)
    for s in SOURCES:
        print(f"{s.name}: {s.note}")
    return 0


def _fetch(name: str, weights_dir: str) -> int:
    try:
        path, downloaded = fetch(source(name), weights_dir)
    except WeightsFetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'wrote' if downloaded else 'already present and loads:'} {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list(args.dir)
    if args.command == "fetch":
        return _fetch(args.name, args.dir)
    try:
        path, warning = import_bam_base_learner(
            args.source,
            dataset=args.dataset,
            fold=args.fold,
            backbone=args.backbone,
            coco_split=args.coco_split,
            out=args.out,
            weights_dir=args.dir,
        )
    except BAMImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {path}")
    print(
        f"use it: python train.py method=bam dataset={args.dataset} fold={args.fold} "
        f"backbone={args.backbone} method.base_learner={path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
