"""``python -m svfseg.weights import-bam BEST_PTH --dataset D --fold K --backbone B [--out PATH]``.

Exit status 0 on success, 2 on bad input (the message names the file and the fix; nothing is written).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from svfseg.weights.bam_import import BAM_BACKBONE_DIRS, BAMImportError, import_bam_base_learner


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m svfseg.weights", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
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
        default=os.environ.get("SVFSEG_WEIGHTS", "initmodel"),
        help="weights folder of the default output (paths.weights_dir; default $SVFSEG_WEIGHTS or initmodel)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
        f"backbone={'vgg16' if args.backbone == 'vgg16_bn' else args.backbone} method.base_learner={path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
